"""Node records: the `hive_nodes` bucket, mirrored in memory, changed by compare-and-set.

The in-memory view (kept current by a KV watch, so a second requester's writes show up
too) answers every read; only approval, registration, info changes and deletes write.
A write that loses a compare-and-set race re-reads the record and tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from hivectl.core import codec
from hivectl.core.auth import AuthError, Identity
from hivectl.core.models import Approval, NodeEvent, NodeInfo, NodeRecord, utcnow
from requester.routing import Refusal

log = logging.getLogger("hive.requester.registry")
CAS_ATTEMPTS = 8
_DELETE_OPS = ("DEL", "PURGE")


class RegistryError(Refusal):
    """A request the registry refuses: `code` for counters and replies."""


@dataclass(slots=True)
class Entry:
    record: NodeRecord
    revision: int


EventSink = Callable[[NodeEvent], Awaitable[None]]


class Registry:
    def __init__(self, bucket: str, identity: Identity, on_event: EventSink) -> None:
        self._bucket = bucket
        self._identity = identity
        self._on_event = on_event
        self._entries: dict[str, Entry] = {}
        self._keys: dict[str, bytes] = {}  # derived MAC keys, per node
        self._kv: KeyValue | None = None
        self._watch_task: asyncio.Task[None] | None = None

    # -- start / stop -------------------------------------------------------------
    async def start(self, js: JetStreamContext) -> None:
        """Open (or create) the bucket and load every record before serving."""
        try:
            self._kv = await js.key_value(self._bucket)
        except BucketNotFoundError:
            config = KeyValueConfig(bucket=self._bucket, history=1, storage=StorageType.FILE)
            self._kv = await js.create_key_value(config=config)
        watcher = await self._kv.watchall()
        while (entry := await watcher.updates(timeout=30)) is not None:  # type: ignore[no-untyped-call]
            self._apply(entry)
        self._watch_task = asyncio.create_task(self._follow(watcher), name="registry-watch")
        log.info("loaded %d node records from %s", len(self._entries), self._bucket)

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        """Take a bucket change into memory, unless memory already has it (our own write)."""
        known = self._entries.get(entry.key)
        revision = entry.revision or 0
        if known is not None and known.revision >= revision:
            return
        if entry.operation in _DELETE_OPS or entry.value is None:
            self._forget(entry.key)
            return
        try:
            record = codec.unpack_model(entry.value, NodeRecord)
        except codec.CodecError as exc:
            log.error("unreadable record %s in %s: %s", entry.key, self._bucket, exc)
            return
        if known is not None and known.record.public_key != record.public_key:
            self._keys.pop(entry.key, None)
        self._entries[entry.key] = Entry(record, revision)

    def _forget(self, node_id: str) -> None:
        self._entries.pop(node_id, None)
        self._keys.pop(node_id, None)

    # -- reads ----------------------------------------------------------------------
    def get(self, node_id: str) -> NodeRecord | None:
        entry = self._entries.get(node_id)
        return entry.record if entry else None

    def records(self) -> Iterable[NodeRecord]:
        return (entry.record for entry in self._entries.values())

    def snapshot(self) -> list[NodeRecord]:
        """All records, copied at once (safe from another thread)."""
        return [entry.record for entry in list(self._entries.values())]

    def ids(self) -> Iterable[str]:
        return self._entries.keys()

    def __len__(self) -> int:
        return len(self._entries)

    def message_key(self, node_id: str) -> bytes | None:
        """The MAC key for a known node's messages (derived once, then cached)."""
        key = self._keys.get(node_id)
        if key is None:
            entry = self._entries.get(node_id)
            if entry is None:
                return None
            try:
                key = self._identity.message_key(entry.record.public_key)
            except AuthError:
                return None
            self._keys[node_id] = key
        return key

    def resolve(self, prefix: str) -> str:
        """The one node id equal to, or else starting with, `prefix`."""
        if prefix in self._entries:
            return prefix
        matches = sorted(node_id for node_id in self._entries if node_id.startswith(prefix))
        if not matches:
            raise RegistryError("not_found", f"node {prefix!r} not found")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise RegistryError("ambiguous", f"node prefix {prefix!r} matches {shown}")
        return matches[0]

    # -- writes ---------------------------------------------------------------------
    async def register(
        self, node_id: str, public_key: str, info: NodeInfo, approve: bool
    ) -> NodeRecord:
        """Create the record, or refresh its info; never changes an existing approval."""
        existing = self.get(node_id)
        if existing is not None:
            if existing.public_key != public_key:
                raise RegistryError(
                    "key_mismatch",
                    f"node id {node_id!r} is bound to another key; an operator must "
                    f"delete it first (hivectl node delete {node_id})",
                )
            return await self.update_info(node_id, info)
        approval = Approval.APPROVED if approve else Approval.PENDING
        record = NodeRecord(node_id=node_id, public_key=public_key, info=info, approval=approval)
        try:
            revision = await self._kv_or_fail().create(node_id, codec.pack_model(record))
        except KeyWrongLastSequenceError:  # another requester created it first
            await self._reload(node_id)
            return await self.register(node_id, public_key, info, approve)
        self._entries[node_id] = Entry(record, revision)
        await self._on_event(NodeEvent(node_id=node_id, event="registered", new=approval))
        return record

    async def update_info(self, node_id: str, info: NodeInfo) -> NodeRecord:
        """Store a node's info only when it changed."""
        return await self._change(node_id, lambda rec: None if rec.info == info else {"info": info})

    async def set_approval(self, node_id: str, approval: Approval, reason: str = "") -> NodeRecord:
        before = self.get(node_id)
        record = await self._change(
            node_id,
            lambda rec: (
                None
                if (rec.approval, rec.reason) == (approval, reason)
                else {"approval": approval, "reason": reason}
            ),
        )
        if before is not None and before.approval != approval:
            await self._on_event(
                NodeEvent(
                    node_id=node_id,
                    event="approval",
                    old=before.approval,
                    new=approval,
                    reason=reason,
                )
            )
        return record

    async def delete(self, node_id: str) -> None:
        before = self.get(node_id)
        await self._kv_or_fail().purge(node_id)
        self._forget(node_id)
        if before is not None:
            await self._on_event(NodeEvent(node_id=node_id, event="deleted", old=before.approval))

    async def _change(
        self, node_id: str, change: Callable[[NodeRecord], dict[str, object] | None]
    ) -> NodeRecord:
        """Apply `change` (None: nothing to do) by compare-and-set, retrying lost races."""
        for _ in range(CAS_ATTEMPTS):
            entry = self._entries.get(node_id)
            if entry is None:
                raise RegistryError("not_found", f"node {node_id!r} not found")
            update = change(entry.record)
            if update is None:
                return entry.record
            record = entry.record.model_copy(update={**update, "updated_at": utcnow()})
            try:
                revision = await self._kv_or_fail().update(
                    node_id, codec.pack_model(record), last=entry.revision
                )
            except KeyWrongLastSequenceError:
                await self._reload(node_id)
                continue
            self._entries[node_id] = Entry(record, revision)
            return record
        raise RegistryError("conflict", f"node {node_id!r} kept changing; try again")

    async def _reload(self, node_id: str) -> None:
        """Re-read one record after a lost compare-and-set."""
        kv = self._kv_or_fail()
        try:
            entry = await kv.get(node_id)
        except Exception:  # deleted or missing: forget it
            self._forget(node_id)
            return
        self._entries.pop(node_id, None)
        self._apply(entry)

    def _kv_or_fail(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("registry used before start()")
        return self._kv
