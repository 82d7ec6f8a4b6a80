"""A JetStream KV bucket of pydantic models, mirrored in memory and changed by CAS.

The requester's node registry and job store are both this: every read comes from
memory, kept current by a KV watch (so a second requester's writes show up too), and
every write is a compare-and-set that re-reads and retries when another writer won.
Every call to the bucket goes through the store's `retried`, so a stream leader election
on a NATS cluster costs a request some seconds, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Generic, TypeVar

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from hivectl.core import codec
from hivectl.core.subjects import Subjects
from requester.provision import ensure_bucket
from requester.routing import Refusal
from requester.store import Store

log = logging.getLogger("hive.requester.kv")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
CAS_ATTEMPTS = 8
_DELETE_OPS = ("DEL", "PURGE")


class Entry(Generic[M]):
    """A value and its revision; a lazy view keeps the bytes and decodes on first read."""

    __slots__ = ("_model", "_packed", "_value", "revision")

    def __init__(
        self, value: M | None, revision: int, packed: bytes = b"", model: type[M] | None = None
    ) -> None:
        self._value, self.revision, self._packed, self._model = value, revision, packed, model

    @property
    def value(self) -> M:
        if self._value is None:
            assert self._model is not None
            self._value = codec.unpack_model(self._packed, self._model)
            self._packed = b""
        return self._value

    @property
    def decoded(self) -> bool:
        return self._value is not None


class KvView(Generic[M]):
    """`noun` names the values in errors ("node", "job"); `error` is the Refusal raised.

    `on_drop(key)` runs when a value leaves memory or is replaced by someone else's
    write, so an owner can drop what it derived from the old value. `on_set(key, value)`
    sees every value memory takes in (None when the key goes), for an owner's indexes.
    `on_key(key)` runs whenever a key's value in memory changes or goes, decoded or
    not (a lazy view's too), for an owner that caches what it built from values.
    """

    def __init__(
        self,
        bucket: str,
        model: type[M],
        *,
        noun: str,
        error: type[Refusal] = Refusal,
        on_drop: Callable[[str], None] | None = None,
        on_set: Callable[[str, M | None], None] | None = None,
        on_key: Callable[[str], None] | None = None,
        attempts: int = CAS_ATTEMPTS,
    ) -> None:
        self.bucket = bucket
        self._model = model
        self._noun = noun
        self._error = error
        self._on_drop = on_drop or (lambda key: None)
        self._on_set = on_set or (lambda key, value: None)  # every value taken in, or None
        self._on_key = on_key or (lambda key: None)
        self._attempts = attempts
        self._entries: dict[str, Entry[M]] = {}
        self._sorted: list[str] | None = None  # sorted keys, until a key comes or goes
        self._listed: list[M] | None = None  # every value, until one changes (`listed`)
        # key -> (bytes, value) of our own write in flight: the watch often delivers it
        # before the write returns, and then it need not be decoded again.
        self._writing: dict[str, tuple[bytes, M]] = {}
        self._kv: KeyValue | None = None
        self._js: Store | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.lost_races = 0  # compare-and-set writes another writer beat (then retried)
        # Keep others' writes packed until read (`on_set` is then not told of them).
        self.lazy = False

    # -- start / stop -------------------------------------------------------------------
    async def start(self, js: Store) -> None:
        """Open (or create) the bucket and load every value before serving."""
        self._js = js
        await ensure_bucket(js, self.bucket)
        self._kv = kv = await js.bucket(self.bucket)
        # The bucket's last revision now: the load is whole once it is in. nats-py's
        # "no more to come" marker is not enough: it can come before values already
        # on their way (its consumer_info sees nothing pending while its callback has
        # not run yet), and a view that stopped there would serve an empty bucket.
        stream = Subjects.kv_stream(self.bucket)
        info = await js.retried(self.bucket, lambda: js.stream_info(stream))
        last = info.state.last_seq
        watcher = await js.retried(self.bucket, kv.watchall, deadline=js.setup_deadline)
        newest, marked = 0, False
        while newest < last:
            try:
                entry = await watcher.updates(timeout=30)  # type: ignore[no-untyped-call]
            except NatsTimeoutError:
                if not marked:
                    raise
                # The last revision went (a limit set on the bucket by hand): what came
                # is all there is; the watch brings the rest as it changes.
                log.warning("%s: revision %d never came; serving what loaded", self.bucket, last)
                break
            if entry is None:
                marked = True  # the marker, early: read on to the last revision
                continue
            newest = max(newest, entry.revision or 0)
            self._apply(entry)
        self._watch_task = asyncio.create_task(self._follow(watcher), name=f"{self.bucket}-watch")
        log.info("loaded %d %ss from %s", len(self._entries), self._noun, self.bucket)

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
            self.forget(entry.key)
            return
        mine = self._writing.get(entry.key)
        if mine is not None and mine[0] == entry.value:
            self._store(entry.key, Entry(mine[1], revision))  # our write, echoed early
            return
        if self.lazy:  # decoded when read: a follower reads few of the values it is sent
            if known is not None:
                self._on_drop(entry.key)
            self._set(entry.key, Entry(None, revision, entry.value, self._model))
            return
        try:
            value = codec.unpack_model(entry.value, self._model)
        except codec.CodecError as exc:
            log.error("unreadable %s %s in %s: %s", self._noun, entry.key, self.bucket, exc)
            return
        if known is not None:
            self._on_drop(entry.key)
        self._store(entry.key, Entry(value, revision))

    def _store(self, key: str, entry: Entry[M]) -> None:
        self._set(key, entry)
        self._on_set(key, entry.value)

    def _set(self, key: str, entry: Entry[M]) -> None:
        if key not in self._entries:
            self._sorted = None
        self._listed = None
        self._entries[key] = entry
        self._on_key(key)

    def decode_all(self) -> None:
        """Decode what a lazy view kept packed, telling `on_set` of each (rebuilding what
        an owner derives from the values: a view that stops being lazy calls this)."""
        for key, entry in list(self._entries.items()):
            try:
                value = entry.value
            except codec.CodecError as exc:
                log.error("unreadable %s %s in %s: %s", self._noun, key, self.bucket, exc)
                continue
            self._on_set(key, value)

    def forget(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._sorted = self._listed = None
            self._on_key(key)
        self._on_drop(key)
        self._on_set(key, None)

    # -- reads --------------------------------------------------------------------------
    def get(self, key: str) -> M | None:
        entry = self._entries.get(key)
        return entry.value if entry else None

    def values(self) -> list[M]:
        """All values, copied at once (safe to call from another thread)."""
        return [entry.value for entry in list(self._entries.values())]

    def listed(self) -> list[M]:
        """All values, listed again only after one changed: the scheduler reads every node
        for every job, and a thousand-entry list a job was a tenth of its placement cost.
        Shared until then (do not change it), so for the event loop's thread only."""
        if self._listed is None:
            self._listed = self.values()
        return self._listed

    def revision(self, key: str) -> int | None:
        """The revision memory holds of `key`; None when it holds none."""
        entry = self._entries.get(key)
        return entry.revision if entry else None

    def keys(self) -> Iterable[str]:
        return self._entries.keys()

    def sorted_keys(self) -> list[str]:
        """Every key in order; sorted again only after a key came or went (do not change
        the list: it is shared until then)."""
        if self._sorted is None:
            self._sorted = sorted(self._entries)
        return self._sorted

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, prefix: str, keep: Callable[[str], bool] | None = None) -> str:
        """The one key equal to, or else starting with, `prefix`; with `keep`, only the
        keys it keeps count as starting with it (others are neither shown nor found)."""
        if prefix in self._entries:
            return prefix
        matches = sorted(
            key for key in self._entries if key.startswith(prefix) and (keep is None or keep(key))
        )
        if not matches:
            raise self._error("not_found", f"{self._noun} {prefix!r} not found")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise self._error("ambiguous", f"{self._noun} prefix {prefix!r} matches {shown}")
        return matches[0]

    # -- writes -------------------------------------------------------------------------
    async def create(self, key: str, value: M) -> bool:
        """Store a new value; False when the key exists already (memory then has it)."""
        try:
            async with self._write(key, value) as data:
                revision = await self._retried(lambda kv: kv.create(key, data))
        except KeyWrongLastSequenceError:  # another requester created it first (or we did,
            # and the reply was lost to a leader election): memory gets what is stored
            self.lost_races += 1
            await self._reload(key)
            return False
        self._store(key, Entry(value, revision))
        return True

    async def put(self, key: str, value: M, last: int | None) -> bool:
        """Write `value` if `key` is still at revision `last` (None: if it does not exist);
        False when another writer got there first (memory then holds what is stored).
        For an owner that decides over several keys and retries the whole decision."""
        try:
            async with self._write(key, value) as data:
                if last is None:
                    revision = await self._retried(lambda kv: kv.create(key, data))
                else:
                    revision = await self._update(key, data, last)
        except KeyWrongLastSequenceError:
            self.lost_races += 1
            await self._reload(key)
            return False
        self._store(key, Entry(value, revision))
        return True

    async def change(self, key: str, change: Callable[[M], M | None]) -> tuple[M, M] | None:
        """(before, after) of `change` applied by compare-and-set; None if the key is gone.

        `change` returning None writes nothing (after is before). A lost race re-reads
        the value and applies `change` again to what is stored now.
        """
        for _ in range(self._attempts):
            entry = self._entries.get(key)
            if entry is None:
                return None
            value = change(entry.value)
            if value is None:
                return entry.value, entry.value
            try:
                async with self._write(key, value) as data:
                    revision = await self._update(key, data, entry.revision)
            except KeyWrongLastSequenceError:
                self.lost_races += 1
                await self._reload(key)
                continue
            self._store(key, Entry(value, revision))
            return entry.value, value
        raise self._error("conflict", f"{self._noun} {key!r} kept changing; try again")

    @contextlib.asynccontextmanager
    async def _write(self, key: str, value: M) -> AsyncIterator[bytes]:
        """`value` packed, remembered as ours while its write is in flight."""
        mine = (codec.pack_model(value), value)
        self._writing[key] = mine
        try:
            yield mine[0]
        finally:
            if self._writing.get(key) is mine:  # not a later write of the same key
                del self._writing[key]

    async def _update(self, key: str, data: bytes, last: int) -> int:
        return await self._retried(lambda kv: kv.update(key, data, last=last))

    async def purge(self, key: str) -> None:
        await self._retried(lambda kv: kv.purge(key))
        self.forget(key)

    async def reload(self, key: str) -> M | None:
        """The value as the bucket has it now (memory may lag a watch that stalled)."""
        await self._reload(key)
        return self.get(key)

    async def _reload(self, key: str) -> None:
        """Re-read one value after a lost compare-and-set."""
        try:
            entry = await self._retried(lambda kv: kv.get(key))
        except (KeyNotFoundError, KeyDeletedError):
            self.forget(key)
            return
        if self._entries.pop(key, None) is not None:
            self._on_key(key)
        self._sorted = self._listed = None
        self._apply(entry)

    async def _retried(self, call: Callable[[KeyValue], Awaitable[T]]) -> T:
        """`call(bucket)` through the store's retries (StoreUnavailable after its deadline)."""
        kv = self._kv_or_fail()
        assert self._js is not None  # set with the bucket
        return await self._js.retried(self.bucket, lambda: call(kv))

    def _kv_or_fail(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError(f"{self.bucket} used before start()")
        return self._kv
