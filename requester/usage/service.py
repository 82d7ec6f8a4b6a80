"""Usage accounting in one requester: its book of the HIVE_USAGE stream, the feed that
keeps it, the publisher of the records this requester writes, and the `usage` API."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from hivectl.core import codec
from hivectl.core.reliability import Reliability
from hivectl.core.subjects import Subjects
from requester.jobs.records import JobStore
from requester.store import Store
from requester.usage.api import Resolve, UsageApi
from requester.usage.book import UsageBook
from requester.usage.records import ended_since
from requester.usage.stream import RECENT, USAGE_MAX_AGE, UsageFeed, UsagePublisher

log = logging.getLogger("hive.requester.usage")
TIDY_EVERY = 60.0  # seconds between drops of hours (and recent ids) the book need not keep


class Usage:
    def __init__(
        self,
        subjects: Subjects,
        js: JetStreamContext,
        *,
        resolve_node: Resolve,
        limits: codec.Limits,
    ) -> None:
        self.book = UsageBook(USAGE_MAX_AGE)
        self.feed = UsageFeed(subjects, self.book, limits)
        self.publisher = UsagePublisher(js, subjects)
        self.api = UsageApi(self.book, resolve_node=resolve_node, limits=limits)
        self._tidied = 0.0

    async def start(self, js: Store, jobs: JobStore) -> None:
        """Read the stream into the book, then record what the job store ends."""
        await self.feed.start(js)
        self.publisher.start()
        jobs.usage = self.publisher.send

    async def close(self) -> None:
        await self.publisher.close()
        await self.feed.close()

    def reliability(self, node_id: str) -> Reliability:
        return self.book.reliability(node_id)

    def tick(self, now: float | None = None) -> None:
        """Drop, now and then, what the stream no longer keeps and the ids no new leader
        will ask about."""
        now = time.time() if now is None else now
        if now - self._tidied < TIDY_EVERY:
            return
        self._tidied = now
        self.book.expire(now)
        self.book.forget_recent(now - 2 * RECENT)

    def republish_recent(self, jobs: JobStore) -> None:
        """A new leader publishes again the records of what ended lately and is not in
        the book: the requester that wrote their end may have died before publishing."""
        cutoff = datetime.now(UTC) - timedelta(seconds=RECENT)
        records = ended_since(jobs, cutoff, self.book.has)
        if records:
            log.info("publishing %d usage records again (ended lately, not in the stream)",
                     len(records))  # fmt: skip
            self.publisher.send(records)
