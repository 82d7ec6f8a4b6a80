"""Which of a cluster's requesters decides: the one holding a lease in a KV bucket.

Every requester serves the API, registers nodes and hears every heartbeat; only the
leader makes the decisions that must be made once: placing jobs (but for those a
follower places while none waits, under the leader's epoch: jobs/assist.py), applying
execution updates, writing off nodes, expiring offers and old jobs (see duties.py).
The lease is one key, `leader`, in the `hive_leases` bucket (history 1):

- A requester with no leader in sight creates the key (a KV create: one of several
  racing wins). Its epoch is the revision it was written at.
- The leader rewrites it every `lease / 3` with compare-and-set on its own last
  revision. Failing that (someone else took it), or unable to renew for `lease` less a
  margin (NATS unreachable, the process frozen), it steps down before anyone else can
  have taken over.
- A follower reads the key every `lease / 6`. Once the same revision has stood for a
  whole `lease` by its own clock, the leader is gone: it takes over with
  compare-and-set on that revision (so of several followers one wins).
- A leader that stops cleanly deletes the key, so the next one takes over at once.
- One that stepped down for want of an answer and finds its own record still there
  (the same revision: nobody took over) takes it back at once.

The epoch (bucket revisions only grow) fences a leader that was paused or cut off and
has not yet noticed: job records remember the epoch of the leader that last wrote them
and refuse an older one, and nodes refuse offers and cancels from an older epoch than
they have seen. Clocks are only ever compared with themselves (monotonic time), so the
guarantee assumes they run at the same rate, not that they agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from nats.errors import Error as NatsError
from nats.js.errors import (
    KeyNotFoundError,
    KeyValueError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from hivectl.core import codec
from hivectl.core.models import Model, ShortText
from requester.provision import ensure_bucket
from requester.store import Store

log = logging.getLogger("hive.requester.leadership")
KEY = "leader"


class LeaseRecord(Model):
    """The lease key's value: who holds it, and which run of that requester."""

    holder: ShortText
    incarnation: ShortText


Elected = Callable[[int], Awaitable[None]]  # the new epoch
Deposed = Callable[[str], Awaitable[None]]  # why


class Leadership:
    def __init__(
        self,
        bucket: str,
        name: str,
        lease: float,
        *,
        on_elected: Elected,
        on_deposed: Deposed,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self.name = name
        self.lease = lease
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._clock = clock
        self._record = codec.pack_model(LeaseRecord(holder=name, incarnation=secrets.token_hex(8)))
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self.epoch = 0  # ours while we lead; 0 when we do not
        self.leader = ""  # who leads, as last read
        self._revision = 0  # of our last write while we lead
        self._renewed = 0.0
        self._seen = (0, 0.0)  # (revision, when we first saw it) of another's lease
        self.elections = 0  # times this requester became leader
        self.takeovers = 0  # of those, from a leader that stopped renewing

    @property
    def is_leader(self) -> bool:
        return self.epoch > 0

    @property
    def margin(self) -> float:
        return self.lease / 4

    def valid(self) -> bool:
        """We lead and can prove it: renewed recently enough that nobody can have taken
        over (a follower waits a whole lease; we stop a margin before that)."""
        return self.epoch > 0 and self._clock() - self._renewed < self.lease - self.margin

    async def start(self, js: Store) -> None:
        await ensure_bucket(js, self.bucket)  # at the configured replicas
        self._kv = await js.bucket(self.bucket)
        await self.step()
        self._task = asyncio.create_task(self._run(), name="leadership")

    async def close(self) -> None:
        """Stop; a leader hands over at once by deleting its lease."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.epoch and self._kv is not None:
            with contextlib.suppress(NatsError, KeyValueError, TimeoutError):
                await self._kv.delete(KEY, last=self._revision)
            log.info("requester %s hands the lead (epoch %d) over", self.name, self.epoch)
        self.epoch = 0

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3 if self.epoch else self.lease / 6)
            await self.step()

    async def step(self) -> None:
        """One renewal, or one look for a leader; never raises for NATS trouble."""
        try:
            await (self._renew() if self.epoch else self._look())
        except (NatsError, KeyValueError, TimeoutError) as exc:
            log.debug("lease %s: %s", "renewal" if self.epoch else "check", exc)
        if self.epoch and not self.valid():
            await self._step_down(f"could not renew the lease for {self.lease - self.margin:g}s")

    async def _renew(self) -> None:
        assert self._kv is not None
        try:
            self._revision = await self._kv.update(KEY, self._record, last=self._revision)
        except KeyWrongLastSequenceError:
            await self._step_down("another requester holds the lease")
            return
        self._renewed = self._clock()

    async def _look(self) -> None:
        assert self._kv is not None
        now = self._clock()
        try:
            entry = await self._kv.get(KEY)
        except KeyNotFoundError:  # none, or deleted by a leader on its way out
            entry = None
        if entry is None or entry.value is None:
            with contextlib.suppress(KeyWrongLastSequenceError, KeyValueError):
                await self._elected(await self._kv.create(KEY, self._record), "")
            return
        holder = codec.unpack_model(entry.value, LeaseRecord).holder
        revision = int(entry.revision or 0)
        if entry.value == self._record:
            # Our own lease, from before we stepped down for want of an answer (the
            # leases stream electing a leader, say): nobody took over since, or the
            # revision would differ. Take it back now rather than wait a lease for it.
            with contextlib.suppress(KeyWrongLastSequenceError):
                taken = await self._kv.update(KEY, self._record, last=revision)
                await self._elected(taken, "")
            return
        if revision != self._seen[0]:
            self._seen, self.leader = (revision, now), holder
            return
        if now - self._seen[1] >= self.lease:
            with contextlib.suppress(KeyWrongLastSequenceError):
                taken = await self._kv.update(KEY, self._record, last=revision)
                await self._elected(taken, holder)

    async def _elected(self, revision: int, previous: str) -> None:
        try:
            await self._take_up(revision, previous)
        except Exception as exc:  # the duties could not start (an election in NATS, say)
            log.exception("requester %s could not take up the lead", self.name)
            await self._step_down(f"could not take up the lead: {exc}")

    async def _take_up(self, revision: int, previous: str) -> None:
        self.epoch = self._revision = revision
        self._renewed = self._clock()
        self.leader = self.name
        self.elections += 1
        if previous:
            self.takeovers += 1
            log.warning(
                "requester %s took the lead (epoch %d) from %s, silent for %gs",
                self.name, revision, previous, self.lease,
            )  # fmt: skip
        else:
            log.info("requester %s leads (epoch %d)", self.name, revision)
        await self._on_elected(revision)

    async def _step_down(self, why: str) -> None:
        epoch, self.epoch, self.leader = self.epoch, 0, ""
        self._seen = (0, 0.0)
        log.warning("requester %s no longer leads (epoch %d): %s", self.name, epoch, why)
        await self._on_deposed(why)
