"""The requester's JetStream handle: per-call timeout, replicas, and retries through elections.

On a NATS cluster a stream's leader can go away (a server killed, restarted, partitioned).
Until its replicas elect another, which took 4 to 8 seconds after a kill -9 in the tests
(raft election timeouts), every call to that stream fails at once with "no response
from stream" (`NoStreamResponseError`), `ServiceUnavailableError`, or times out. Such a
call is tried again here, in one place, until `deadline` (below hivectl's 5s, so a
request that still cannot be served is answered "store unavailable" before the client
gives up on it) and otherwise raises `StoreUnavailable`, which the API turns into that
reply. A start-up call (creating streams and buckets) gets `setup_deadline` instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import stamina
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NoStreamResponseError, ServiceUnavailableError
from nats.js.kv import KeyValue

from hivectl.core.config import RequesterConfig

log = logging.getLogger("hive.requester.store")
T = TypeVar("T")


class NotVisibleYet(Exception):
    """A bucket just made (by this requester, or by one starting beside it) that a NATS
    cluster does not show yet: its stream's group is still electing a leader."""


# Failures a stream leader election (or a server restart) causes, and nothing else.
TRANSIENT: tuple[type[Exception], ...] = (
    NoStreamResponseError,
    ServiceUnavailableError,
    NoRespondersError,
    TimeoutError,  # nats-py's TimeoutError is one too
    NotVisibleYet,
)
SETUP_DEADLINE = 60.0  # start-up may wait out several elections (a cluster starting)
RETRY_FIRST, RETRY_MAX = 0.05, 0.5


class StoreUnavailable(Exception):
    """A JetStream call that kept failing for a transient reason until the deadline."""

    def __init__(self, what: str, deadline: float, last: BaseException | None) -> None:
        cause = f": {_text(last)}" if last is not None else ""
        super().__init__(f"{what}: no answer from JetStream within {deadline:g}s{cause}")
        self.what = what
        self.deadline = deadline


class Store(JetStreamContext):
    """A JetStream context that also knows how many replicas Hive's streams and buckets
    get and how long a call may be retried; see `retried`."""

    def __init__(
        self,
        nc: Client,
        *,
        timeout: float,
        deadline: float,
        replicas: int = 1,
        setup_deadline: float = SETUP_DEADLINE,
    ) -> None:
        super().__init__(nc, timeout=timeout)
        self.deadline = deadline
        self.setup_deadline = setup_deadline
        self.replicas = replicas
        self._failing_since: dict[str, float] = {}  # what -> when it first failed

    async def retried(
        self, what: str, call: Callable[[], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        """`call()`, tried again while it fails transiently, for at most `deadline`
        seconds in all (default: the store's), else StoreUnavailable. `what` names the
        stream or bucket, for the log: one line when it stops answering, one when it
        answers again (with how long that took)."""
        limit = self.deadline if deadline is None else deadline
        last: BaseException | None = None

        def transient(exc: Exception) -> bool:
            nonlocal last
            last = exc
            if isinstance(exc, TRANSIENT):
                self._failing(what, exc)
                return True
            return False

        try:
            async with asyncio.timeout(limit):
                try:  # the first try outside stamina: most calls need no other, and
                    # setting up a retry context cost a requester 3% of its CPU
                    result = await call()
                    self._answered(what)
                    return result
                except TRANSIENT as exc:
                    transient(exc)
                async for attempt in stamina.retry_context(
                    on=transient, attempts=None, timeout=None,
                    wait_initial=RETRY_FIRST, wait_max=RETRY_MAX, wait_jitter=RETRY_FIRST,
                ):  # fmt: skip
                    with attempt:
                        result = await call()
                        self._answered(what)
                        return result
        except TRANSIENT:  # the deadline cut the last try short
            raise StoreUnavailable(what, limit, last) from None
        raise AssertionError("retry_context ended without a result")  # attempts=None

    async def bucket(self, name: str) -> KeyValue:
        """The KV bucket `name`, which ensure_bucket made or found just before: retried
        until the setup deadline while a cluster does not show it yet (two requesters
        started at once on a fresh cluster: one of them died of "bucket not found")."""

        async def opened() -> KeyValue:
            try:
                return await self.key_value(name)
            except BucketNotFoundError:
                raise NotVisibleYet(name) from None

        return await self.retried(name, opened, deadline=self.setup_deadline)

    def _failing(self, what: str, exc: BaseException) -> None:
        if what not in self._failing_since:
            self._failing_since[what] = time.monotonic()
            log.warning("JetStream: %s does not answer (%s); retrying", what, _text(exc))

    def _answered(self, what: str) -> None:
        since = self._failing_since.pop(what, None)
        if since is not None:
            log.info("JetStream: %s answers again after %.1fs", what, time.monotonic() - since)


def open_store(nc: Client, config: RequesterConfig) -> Store:
    """The requester's store on `nc`, as `config` says."""
    return Store(
        nc,
        timeout=config.store_timeout,
        deadline=config.store_deadline,
        replicas=config.jetstream.replicas,
    )


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
