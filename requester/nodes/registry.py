"""Node records: the `hive_nodes` bucket, mirrored in memory, changed by compare-and-set.

The in-memory view (kept current by a KV watch, so a second requester's writes show up
too) answers every read; only approval, registration, info changes and deletes write.
A write that loses a compare-and-set race re-reads the record and tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from hivectl.core import labels
from hivectl.core.auth import AuthError, Identity
from hivectl.core.models import Approval, NodeEvent, NodeInfo, NodeRecord, utcnow
from requester.kvview import KvView
from requester.routing import Refusal
from requester.store import Store

log = logging.getLogger("hive.requester.registry")


class RegistryError(Refusal):
    """A request the registry refuses: `code` for counters and replies."""


EventSink = Callable[[NodeEvent], Awaitable[None]]
RecordChange = Callable[[NodeRecord], dict[str, object] | None]  # fields to set; None: none


class Registry:
    def __init__(self, bucket: str, identity: Identity, on_event: EventSink) -> None:
        self._identity = identity
        self._on_event = on_event
        self._keys: dict[str, bytes] = {}  # derived MAC keys, per node
        # node id -> (the record, its merged labels): built once per record object
        self._labels: dict[str, tuple[NodeRecord, dict[str, str]]] = {}
        self._warming: asyncio.Task[None] | None = None
        self._closing = False
        self._draining: set[str] = set()  # nodes with a drain going on, for the leader
        # A record replaced or removed may carry another key: derive it afresh.
        self._view: KvView[NodeRecord] = KvView(
            bucket,
            NodeRecord,
            noun="node",
            error=RegistryError,
            on_drop=self._drop_key,
            on_set=self._index,
        )

    async def start(self, js: Store) -> None:
        """Open (or create) the bucket and load every record before serving."""
        await self._view.start(js)
        # Deriving a node's key costs ~150 us. Done lazily, a restarted requester pays
        # it for every node on the heartbeat path at once (seconds with 50,000 nodes,
        # delaying API replies); a worker thread does it now instead (libsodium runs
        # without the GIL), and the lazy path stays for nodes it has not reached yet.
        self._warming = asyncio.create_task(asyncio.to_thread(self._derive_keys))

    async def close(self) -> None:
        self._closing = True
        await self._view.close()

    def _derive_keys(self) -> None:
        for node_id in list(self._view.keys()):
            if self._closing:
                return
            record = self._view.get(node_id)
            if record is None or node_id in self._keys:
                continue
            try:
                key = self._identity.message_key(record.public_key)
            except AuthError:
                continue
            if self._view.get(node_id) is record:  # not replaced meanwhile
                self._keys.setdefault(node_id, key)

    def _drop_key(self, node_id: str) -> None:
        self._keys.pop(node_id, None)
        self._labels.pop(node_id, None)

    def _index(self, node_id: str, record: NodeRecord | None) -> None:
        if record is not None and record.draining:
            self._draining.add(node_id)
        else:
            self._draining.discard(node_id)

    # -- reads ----------------------------------------------------------------------
    def get(self, node_id: str) -> NodeRecord | None:
        return self._view.get(node_id)

    def records(self) -> Iterable[NodeRecord]:
        return self._view.values()

    def snapshot(self) -> list[NodeRecord]:
        """All records, copied at once (safe from another thread)."""
        return self._view.values()

    def listed(self) -> list[NodeRecord]:
        """All records, listed again only after one changed (the scheduler's, which reads
        them for every job): shared, so do not change it, and from the event loop only."""
        return self._view.listed()

    def ids(self) -> Iterable[str]:
        return self._view.keys()

    def sorted_ids(self) -> list[str]:
        """Every node id in order (shared and cached: do not change it)."""
        return self._view.sorted_keys()

    def __len__(self) -> int:
        return len(self._view)

    def draining(self) -> list[str]:
        """The nodes a drain is going on for, by id (what the leader looks at each tick)."""
        return sorted(self._draining)

    def message_key(self, node_id: str) -> bytes | None:
        """The MAC key for a known node's messages (derived once, then cached)."""
        key = self._keys.get(node_id)
        if key is None:
            record = self._view.get(node_id)
            if record is None:
                return None
            try:
                key = self._identity.message_key(record.public_key)
            except AuthError:
                return None
            self._keys[node_id] = key
        return key

    def labels(self, record: NodeRecord) -> Mapping[str, str]:
        """The node's merged labels (automatic < its own < the operator's), as scheduling
        and selectors see them. Kept per record object: a change makes a new record, and
        every placement and `-l` listing would otherwise merge every node's again."""
        cached = self._labels.get(record.node_id)
        if cached is not None and cached[0] is record:
            return cached[1]
        merged = labels.merge(record.info, record.operator_labels)
        self._labels[record.node_id] = (record, merged)
        return merged

    def resolve(self, prefix: str) -> str:
        """The one node id equal to, or else starting with, `prefix`."""
        return self._view.resolve(prefix)

    # -- writes ---------------------------------------------------------------------
    async def register(
        self,
        node_id: str,
        public_key: str,
        info: NodeInfo,
        approve: bool,
        *,
        reason: str = "",
        operator_labels: dict[str, str] | None = None,
    ) -> NodeRecord:
        """Create the record, or refresh its info; never changes an existing approval.

        `reason` and `operator_labels` (an enrollment token's) go into a new record only.
        """
        existing = self.get(node_id)
        if existing is not None:
            self.check_key(existing, public_key)
            return await self.update_info(node_id, info)
        approval = Approval.APPROVED if approve else Approval.PENDING
        record = NodeRecord(
            node_id=node_id,
            public_key=public_key,
            info=info,
            approval=approval,
            reason=reason,
            operator_labels=operator_labels or {},
        )
        if not await self._view.create(node_id, record):  # another requester was first
            return await self.register(node_id, public_key, info, approve)
        event = NodeEvent(node_id=node_id, event="registered", new=approval, reason=reason)
        await self._on_event(event)
        return record

    @staticmethod
    def check_key(record: NodeRecord, public_key: str) -> None:
        """Refuse a registration for `record`'s id under another key."""
        if record.public_key != public_key:
            node_id = record.node_id
            raise RegistryError(
                "key_mismatch",
                f"node id {node_id!r} is bound to another key; an operator must "
                f"delete it first (hivectl node delete {node_id})",
            )

    async def enroll(
        self, node_id: str, approve: bool, reason: str, labels: dict[str, str]
    ) -> NodeRecord:
        """An enrollment token's verdict on a known PENDING node: APPROVED with the
        token's labels added to its operator labels, or left PENDING with `reason`. A
        node in any other state is left as it is (an operator's reject stands)."""

        def apply(rec: NodeRecord) -> dict[str, object] | None:
            if rec.approval is not Approval.PENDING or (not approve and rec.reason == reason):
                return None
            if not approve:
                return {"reason": reason}
            merged = {**rec.operator_labels, **labels}
            return {"approval": Approval.APPROVED, "reason": reason, "operator_labels": merged}

        before = self.get(node_id)
        record = await self._change(node_id, apply)
        if before is not None and before.approval != record.approval:
            event = NodeEvent(
                node_id=node_id, event="approval", old=before.approval, new=record.approval,
                reason=reason,
            )  # fmt: skip
            await self._on_event(event)
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

    async def delete(self, node_id: str, reason: str = "") -> None:
        before = self.get(node_id)
        await self._view.purge(node_id)
        if before is not None:
            event = NodeEvent(node_id=node_id, event="deleted", old=before.approval, reason=reason)
            await self._on_event(event)

    async def _change(self, node_id: str, change: RecordChange) -> NodeRecord:
        """Apply `change` (None: nothing to do) by compare-and-set, retrying lost races."""
        return (await self.change(node_id, change))[1]

    async def change(self, node_id: str, change: RecordChange) -> tuple[NodeRecord, NodeRecord]:
        """(before, after) of `change` (fields to set; None: nothing to do) applied by
        compare-and-set, retrying lost races; for changes other modules decide. `change`
        sees the record as stored and may raise to refuse."""

        def apply(record: NodeRecord) -> NodeRecord | None:
            update = change(record)
            if update is None:
                return None
            return record.model_copy(update={**update, "updated_at": utcnow()})

        changed = await self._view.change(node_id, apply)
        if changed is None:
            raise RegistryError("not_found", f"node {node_id!r} not found")
        return changed

    async def emit(self, event: NodeEvent) -> None:
        """Publish an event about a node (through the requester's event sink)."""
        await self._on_event(event)
