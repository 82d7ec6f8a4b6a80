"""Which requesters a cluster has, and which of them leads, for `hivectl node list`.

Every requester writes a small record, `requester.<name>` in the `hive_leases` bucket,
every `lease / 3` and deletes it when it stops cleanly; every requester watches those
keys. As with nodes, a record's freshness is judged by the reader's own receive clock,
never the writer's: HEALTHY while heard within one lease, UNHEALTHY until three, then
UNKNOWN; one not heard for ten leases is no longer listed (a requester killed with -9
shows the operator that it went away, then drops out, leaving its small record behind
until that name starts again). Records found at start are not listed until heard anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import socket
import time
from collections.abc import Callable
from datetime import datetime

from nats.errors import Error as NatsError
from nats.js.errors import KeyValueError
from nats.js.kv import KeyValue

import hivectl
from hivectl.core import codec, labels
from hivectl.core.api import NodeView
from hivectl.core.models import (
    Approval,
    Health,
    Model,
    NodeId,
    NodeInfo,
    NodeType,
    NonNegInt,
    ShortText,
    utcnow,
)
from requester.store import Store

log = logging.getLogger("hive.requester.presence")
PREFIX = "requester."
ROLE_LABEL = "hive.io/role"


class RequesterRecord(Model):
    """What a requester says of itself to the others."""

    name: NodeId
    public_key: ShortText
    info: NodeInfo
    started_at: datetime
    epoch: NonNegInt = 0  # > 0 while it leads


class Presence:
    """Announces this requester and keeps the others' records, with when each was heard."""

    def __init__(
        self, bucket: str, me: RequesterRecord, lease: float, epoch: Callable[[], int]
    ) -> None:
        self.bucket = bucket
        self._me = me
        self._lease = lease
        self._epoch = epoch
        self._others: dict[str, tuple[RequesterRecord, float]] = {}
        self._started = float("-inf")  # when the records there at start were loaded
        self._kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, js: Store) -> None:
        """The bucket exists (the election made it): announce, then follow the others."""
        self._kv = kv = await js.bucket(self.bucket)
        await self._announce()
        watcher = await kv.watch(f"{PREFIX}*")
        self._started = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._follow(watcher), name="presence-watch"),
            asyncio.create_task(self._announcing(), name="presence-announce"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._kv is not None:
            with contextlib.suppress(NatsError, KeyValueError, TimeoutError):
                await self._kv.delete(PREFIX + self._me.name)

    async def _announcing(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await self._announce()
            except (NatsError, KeyValueError, TimeoutError) as exc:
                log.debug("presence not written: %s", exc)

    async def _announce(self) -> None:
        assert self._kv is not None
        record = self._me.model_copy(update={"epoch": self._epoch()})
        await self._kv.put(PREFIX + self._me.name, codec.pack_model(record))

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        loaded = False
        async for entry in watcher:
            if entry is None:  # the records there at start are all delivered
                loaded = True
                continue
            if entry.key == PREFIX + self._me.name:
                continue
            name = entry.key.removeprefix(PREFIX)
            if entry.value is None or entry.operation is not None:  # deleted or purged
                self._others.pop(name, None)
                continue
            try:
                record = codec.unpack_model(entry.value, RequesterRecord)
            except codec.CodecError as exc:
                log.warning("unreadable requester record %s: %s", entry.key, exc)
                continue
            # A record loaded at start says nothing of when its writer last lived.
            self._others[name] = (record, time.monotonic() if loaded else float("-inf"))

    def leader(self) -> tuple[str, int]:
        """(name, epoch) of another requester that leads and was heard within a lease
        (it writes every third of one), or whose record was there at start, for a lease
        after that; ("", 0) when none. Of two that say they lead (an old leader's last
        record), the newer epoch. A leader that died may be named for up to a lease: its
        epoch is then the newest there is, and once another leads, its records and the
        nodes refuse that epoch."""
        now, found = time.monotonic(), ("", 0)
        for record, heard in self._others.values():
            if heard == float("-inf"):
                heard = self._started
            if record.epoch > found[1] and now - heard < self._lease:
                found = (record.name, record.epoch)
        return found

    def health(self, heard: float, now: float) -> Health:
        age = now - heard
        if age < self._lease:
            return Health.HEALTHY
        return Health.UNHEALTHY if age < 3 * self._lease else Health.UNKNOWN

    def views(self) -> list[NodeView]:
        """Every requester heard lately, this one included, by name."""
        now = time.monotonic()
        mine = self._me.model_copy(update={"epoch": self._epoch()})
        entries = [(mine, Health.HEALTHY)] + [
            (record, self.health(heard, now))
            for record, heard in self._others.values()
            if now - heard < 10 * self._lease
        ]
        return sorted((_view(r, h) for r, h in entries), key=lambda v: v.node_id)


def _view(record: RequesterRecord, health: Health) -> NodeView:
    role = "leader" if record.epoch else "follower"
    return NodeView(
        node_id=record.name,
        type=NodeType.REQUESTER,
        approval=Approval.APPROVED,
        health=health,
        reason=f"leader (epoch {record.epoch})" if record.epoch else "",
        public_key=record.public_key,
        info=record.info,
        labels=labels.auto_labels(record.info) | {ROLE_LABEL: role},
        registered_at=record.started_at,
    )


def own_record(name: str, public_key: str, info: NodeInfo) -> RequesterRecord:
    return RequesterRecord(name=name, public_key=public_key, info=info, started_at=utcnow())


def requester_info() -> NodeInfo:
    """The requester lists itself, as in Bacalhau: type Requester, APPROVED, HEALTHY."""
    return NodeInfo(
        hostname=socket.gethostname()[:256],
        arch=platform.machine()[:256],
        os=platform.system().lower()[:256],
        version=hivectl.__version__,
    )
