"""The HIVE_USAGE stream: one record per ended execution, written once, read by all.

The requester that writes an execution's end publishes its record (UsagePublisher)
with `Nats-Msg-Id` = the exec id, so a repeat within the duplicate window (a retry
after a lost ack, a new leader publishing again what its predecessor may have
published just before it died) is stored once. Every requester reads the stream from
its start into its UsageBook (UsageFeed): the book is rebuilt whole at each start and
kept current after, so usage and reliability survive restarts and failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig

from hivectl.core import codec
from hivectl.core.subjects import Subjects
from hivectl.core.usage import UsageRecord
from requester.provision import ensure_stream
from requester.store import Store
from requester.usage.book import UsageBook

log = logging.getLogger("hive.requester.usage")

DAY = 24 * 3600.0
USAGE_MAX_AGE = 90 * DAY  # what `hivectl usage` can go back over; reliability counts it
# A record published again within this window is stored once. A new leader publishes
# again what ended within RECENT before it took over (see LeaderDuties), well inside it.
USAGE_DUPLICATE_WINDOW = 600.0
RECENT = 240.0
CATCH_UP_WAIT = 60.0  # how long a start waits for the book to read the stream
PUBLISH_TIMEOUT = 5.0
BATCH = 256  # records published at once at most
RETRY_AFTER = 1.0


def usage_stream_config(subjects: Subjects) -> StreamConfig:
    return StreamConfig(
        name=subjects.usage_stream,
        subjects=[subjects.usage()],
        storage=StorageType.FILE,
        max_age=USAGE_MAX_AGE,
        duplicate_window=USAGE_DUPLICATE_WINDOW,
        discard=DiscardPolicy.OLD,
    )


class UsagePublisher:
    """Publishes records in the background, in order of arrival, until each is stored:
    a write of an execution's end never waits for its record, and a store that does not
    answer delays the records without losing them (while this requester runs)."""

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects
        self._pending: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set while nothing is pending
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.duplicates = 0

    def send(self, records: list[UsageRecord]) -> None:
        if records:
            self._pending.extend(records)
            self._drained.clear()
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-publisher")

    async def close(self, grace: float = 2.0) -> None:
        """Publish what is pending, for up to `grace` seconds, then stop."""
        if self._pending and self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        if self._pending:
            log.warning("%d usage records not published at close", len(self._pending))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                sent = await asyncio.gather(*map(self._publish, batch))
                failed = [r for r, ok in zip(batch, sent, strict=True) if not ok]
                if failed:  # back to the front, in order; the store is away for now
                    self._pending.extendleft(reversed(failed))
                    await asyncio.sleep(RETRY_AFTER)
            self._drained.set()

    async def _publish(self, record: UsageRecord) -> bool:
        subject = self._subjects.usage(record.node_id)
        headers = {"Nats-Msg-Id": record.exec_id}
        try:
            ack = await self._js.publish(
                subject, codec.encode(record), timeout=PUBLISH_TIMEOUT, headers=headers
            )
        except Exception as exc:  # NATS away, the stream electing a leader: again later
            log.debug("usage record of %s not stored yet: %s", record.exec_id, exc)
            return False
        self.published += 1
        self.duplicates += bool(ack.duplicate)
        return True


class UsageFeed:
    """Reads HIVE_USAGE from its start into `book`, then follows it."""

    def __init__(self, subjects: Subjects, book: UsageBook, limits: codec.Limits) -> None:
        self._subjects = subjects
        self.book = book
        self._limits = limits
        self._sub: Subscription | None = None
        self._caught_up = asyncio.Event()
        self.rejected = 0

    async def start(self, js: Store) -> None:
        """Create the stream if need be, subscribe, and wait (a while) until the book
        holds what the stream held at start."""
        await ensure_stream(js, usage_stream_config(self._subjects))
        stream = self._subjects.usage_stream
        info = await js.retried(stream, lambda: js.stream_info(stream))
        if not info.state.messages:
            self._caught_up.set()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        self._sub = await js.retried(
            stream,
            lambda: js.subscribe(
                self._subjects.usage(), stream=stream, ordered_consumer=True,
                config=config, cb=self._on_record,
            ),
            deadline=js.setup_deadline,
        )  # fmt: skip
        started = time.monotonic()
        try:
            async with asyncio.timeout(CATCH_UP_WAIT):
                await self._caught_up.wait()
        except TimeoutError:
            log.warning("usage: %d records read in %gs; the rest follow while serving",
                        self.book.records, CATCH_UP_WAIT)  # fmt: skip
        else:
            log.info("usage: %d records read in %.2fs", self.book.records,
                     time.monotonic() - started)  # fmt: skip

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may already be gone
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_record(self, msg: Msg) -> None:
        try:
            record = codec.decode(msg.data, UsageRecord, self._limits)
        except codec.CodecError as exc:  # only requesters write here: a bug, not an attack
            self.rejected += 1
            log.warning("usage record %s skipped: %s", msg.metadata.sequence.stream, exc)
        else:
            self.book.add(record)
        if msg.metadata.num_pending == 0:
            self._caught_up.set()
