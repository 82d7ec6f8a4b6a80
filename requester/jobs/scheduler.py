"""The scheduler: places jobs on nodes by offer, retries queued work, handles lost nodes.

One worker task decides. It wakes when kicked (a job was submitted, an execution
failed, a node was lost) and on every tick, when it looks at every unfinished job
afresh: what a kick announced is also found by the tick, so a kick lost to a crash only
delays the work. Placements are pipelined: up to `parallel` jobs have their KV writes
and offers in flight at once, since those round trips, not the decisions, are what a
placement mostly waits on. Each decision is planned and charged to one shared Ledger in
a single step with no await in between, and capacity goes back only when a node
declines or does not answer, so two decisions never count the same free capacity
twice. Before an offer is sent the execution is stored as OFFERED, so a requester that
dies mid-offer finds it after a restart instead of placing the work a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Histogram

from hivectl.core.jobs import (
    JOB_TERMINAL,
    Execution,
    Job,
    new_exec_id,
)
from hivectl.core.models import utcnow
from hivectl.core.quotas import Quota
from requester.jobs import fairqueue, placement
from requester.jobs.assist import Claims
from requester.jobs.executions import (
    failures,
    missing,
    resettle,
    wait,
)
from requester.jobs.fairshare import DEFAULT_HALF_LIFE, FairShare
from requester.jobs.fenced import Deposed, FencedJobs
from requester.jobs.ledger import Ledger, Room, held_in
from requester.jobs.nodechanges import NodeChanges
from requester.jobs.offers import Offers, store_offers
from requester.jobs.quotagate import QuotaGate
from requester.jobs.reserve import Reservations
from requester.jobs.turns import Turns
from requester.nodes.link import LATENCY_BUCKETS, NodeLink
from requester.nodes.liveness import Liveness
from requester.nodes.registry import Registry

log = logging.getLogger("hive.requester.scheduler")
# Jobs placed at once. Each waits mostly on two KV writes and its offers (three round
# trips, some milliseconds under load): with 8 in flight a leader on a core of its own
# placed jobs of count 1 at 600-700/s while idle a third of the time.
PARALLEL = 32
NO_QUOTA = Quota()


@dataclass(slots=True)
class Pass:
    """What one scheduling pass of a job has tried, to move on and to explain."""

    tried: set[str] = field(default_factory=set)
    declined: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        store: FencedJobs,
        registry: Registry,
        liveness: Liveness,
        link: NodeLink,
        *,
        interval: float,
        offer_timeout: float,
        parallel: int = PARALLEL,
        scores: Mapping[str, float] = placement.NO_SCORES,
        tiers: Mapping[str, int] = placement.NO_TIERS,
        share: FairShare | None = None,
        quotas: Callable[[str], Quota] | None = None,
        reserve_after: float = 0.0,
        claims: Claims | None = None,
    ) -> None:
        self._store = store
        self._claims = claims  # jobs another requester took to place (assist.py)
        self._registry = registry
        self._liveness = liveness
        self._link = link
        self._interval = interval
        self._offer_timeout = offer_timeout
        self._parallel = max(1, parallel)
        self._sample_start = 0  # where the next batch job's sample of nodes begins
        self._scores = scores  # nodes' reliability, kept current by the usage feed
        self._tiers = tiers  # and the ranking tiers of those below a new node's
        self.share = share or FairShare(DEFAULT_HALF_LIFE)
        self.gate = QuotaGate(quotas or (lambda owner: NO_QUOTA), self.share)
        # Jobs to look at, in the fair queue's order (priority, fair share, FIFO).
        self._turns = Turns(self.share.rank, spare=self._parallel)
        self._nodes = NodeChanges(store, link, want=self._want)
        self.reservations = Reservations(reserve_after)
        self._offers = Offers(store, link, offer_timeout)
        self._busy: set[str] = set()  # jobs being placed now
        self._starved: set[str] = set()  # found no node while capacity was held in flight
        self._pass_ledger: Ledger | None = None  # the ledger of the pass running now
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # a kick, or a placement finished
        self._next_tick = 0.0
        self._task: asyncio.Task[None] | None = None
        self.placed = 0
        self.placement_seconds = placement_histogram()

    # -- inputs ---------------------------------------------------------------------
    def kick(self, job_id: str) -> None:
        self._want(job_id)
        self._wake.set()
        self._progress.set()

    def _want(self, job_id: str, job: Job | None = None) -> None:
        """The job is looked at, in its turn."""
        record = job or self._store.record(job_id)
        if record is None:  # gone, or not in memory yet (the tick finds it)
            return
        claims = self._claims
        if record.placer and claims and claims.theirs(self._store.get(job_id) or record):
            return  # its placer's to place for now (the tick looks again)
        self._turns.want(record)

    def node_lost(self, node_id: str) -> None:
        self._nodes.changed(node_id, lost=True)
        self._wake.set()
        self._progress.set()

    def node_back(self, node_id: str) -> None:
        self._nodes.changed(node_id, lost=False)
        self._wake.set()
        self._progress.set()

    def ended(self, exec_ids: list[str]) -> None:
        """These executions ended: their room is free now, for this pass too. Jobs that
        found no room look again (best first; see turns.py for the backfill rule), and
        as many jobs as an owner's executions ended that its quota held. The tick still
        looks at every job."""
        ledger = self._pass_ledger
        if ledger is not None:
            for exec_id in exec_ids:
                ledger.release_exec(exec_id)
        for job_id in self._turns.room_freed(len(exec_ids), self._busy.__contains__):
            self._want(job_id)
        if (held := self.reservations.held) is not None:  # its node may have room now
            self._want(held.job_id)
        if self._turns.held:
            owners = Counter(
                record.owner
                for exec_id in exec_ids
                if (owned := self._store.job_of(exec_id)) is not None
                and (record := self._store.record(owned)) is not None
            )
            for owner, count in owners.items():
                for job_id in self._turns.quota_freed(owner, count):
                    self._want(job_id)
        self._wake.set()
        self._progress.set()

    def executions_gone(self, node_id: str, gone: dict[str, str]) -> None:
        """`node_id` does not hold these executions ({exec id: job id}) any more."""
        self._nodes.gone(node_id, gone)
        self._wake.set()
        self._progress.set()

    def queued(self) -> list[Job]:
        """The jobs waiting to be placed, in the order they will be (see fairqueue.py)."""
        return fairqueue.queued(self._store, self.share, self.gate)

    # -- the worker -----------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._next_tick = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, self._next_tick - loop.time()))
            self._wake.clear()
            try:
                if loop.time() >= self._next_tick:
                    self._next_tick = loop.time() + self._interval
                    await self._tick()
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad pass must not stop scheduling for good
                log.exception("scheduler pass failed")

    async def _tick(self) -> None:
        """Every unfinished job that lacks executions is looked at again."""
        await self._offers.tick()
        if (held := self.reservations.held) is not None:
            self.reservations.check(self._store.get(held.job_id))
        for job in self._store.unfinished():
            if resettle(job) is not None:  # a change cut short left the record behind
                try:
                    job = await self._store.change(job.job_id, resettle) or job
                except Deposed:
                    raise
                except Exception as exc:  # the store away: the next tick tries again
                    log.warning("job %s not brought level with its executions: %s", job.job_id, exc)
            if job.state not in JOB_TERMINAL and missing(job)[0]:
                self._want(job.job_id, job)

    async def _drain(self) -> None:
        """Node changes first, then the wanted jobs, `parallel` at a time, one ledger."""
        await self._nodes.handle()
        if not self._turns.wanted:
            return
        self._pass_ledger = ledger = held_in(self._store)
        try:
            async with asyncio.TaskGroup() as placing:
                while (job_id := await self._next_job()) is not None:
                    placing.create_task(self._place(job_id, ledger), name=f"place-{job_id}")
        finally:
            self._pass_ledger = None

    async def _next_job(self) -> str | None:
        """The next wanted job not already being placed, once there is room for it.

        Node changes are handled as they come, beside the placements in flight. None
        when nothing is left to start and nothing is in flight, and also, once the
        placements in flight end, when the tick is due: the pass ends so that the tick
        runs and the next pass starts from a ledger rebuilt from the job records (the
        executions that ended meanwhile give their room back).
        """
        loop = asyncio.get_running_loop()
        while True:
            await self._nodes.handle()
            if loop.time() < self._next_tick and len(self._busy) < self._parallel:
                job_id = self._turns.next(self._busy.__contains__)
                if job_id is not None:
                    self._busy.add(job_id)
                    return job_id
            if not self._busy:
                return None
            self._progress.clear()
            await self._progress.wait()

    async def _place(self, job_id: str, ledger: Ledger) -> None:
        started = time.perf_counter()
        try:
            await self._schedule(job_id, ledger)
        except Deposed:  # no longer leading (closing, or another took over): not a fault
            log.debug("job %s left unplaced: this requester no longer leads", job_id)
        except Exception:  # one job's failure must not cancel the others in flight
            log.exception("scheduling job %s failed", job_id, extra={"job_id": job_id})
        finally:
            self._busy.discard(job_id)
            self._progress.set()
            self.placement_seconds.observe(time.perf_counter() - started)

    # -- placing ----------------------------------------------------------------------
    async def _schedule(self, job_id: str, ledger: Ledger) -> None:
        """Offer the job's missing executions until all are placed or no node is left."""
        attempt = Pass()
        while (job := self._store.get(job_id)) is not None and job.state not in JOB_TERMINAL:
            need, nodes = missing(job)
            if need == 0:
                break
            want = Room.of(job.spec.resources)
            allowed, over = self.gate.allows(job, want)
            if not allowed:  # waits for its owner's earlier work, not for a node
                self._turns.over_quota(job)
                self.reservations.release(job_id)
                await self._wait(job_id, over)
                return
            kept = self.reservations.kept_from(job)
            skip = attempt.tried if kept is None else attempt.tried | {kept}
            sample = placement.sample_size(need, nodes)
            fitting, why = placement.candidates(
                job,
                self._registry.listed(),
                self._liveness,
                ledger,
                self._registry.labels,
                self._scores,
                self._tiers,
                sample=sample,
                start=self._sample_start,
                skip=skip,
            )
            self._sample_start += sample  # the next job looks further round the cluster
            fitting = [c for c in fitting if c.node_id not in skip]
            if not fitting and not why and kept is not None:
                why = self.reservations.why_kept(kept)
            chosen = placement.plan(job, need, nodes, fitting)[:allowed]
            if not chosen:
                if len(self._busy) > 1:  # others hold capacity that a decline may free
                    self._starved.add(job_id)
                self._turns.no_room(job)
                why = why or placement.declined(attempt.declined)
                await self._wait(job_id, why + self._hold_for(job, ledger))
                return
            attempt.tried.update(chosen)
            for node_id in chosen:  # held before the first await: no other decision sees it
                ledger.hold(node_id, want)
            self.gate.charge(job.owner, want, len(chosen))
            await self._offer(job, chosen, attempt, ledger, want)
        self._turns.settled(job_id, job.owner if job is not None else None)
        self.reservations.release(job_id)

    def _hold_for(self, job: Job, ledger: Ledger) -> str:
        """A node held for the job, if it is due one (see reserve.py): said in its reason."""
        if not self.reservations.due(job, utcnow()):
            return ""
        snapshot, labels = self._registry.listed(), self._registry.labels
        held = self.reservations.held
        node_id = placement.reservable(
            job, snapshot, self._liveness, ledger, labels, keep=held.node_id if held else None
        )
        if node_id is None:
            self.reservations.release(job.job_id)
            return ""
        self.reservations.hold(job.job_id, node_id)
        return f"; node {node_id} is held for it"

    async def _offer(
        self, job: Job, chosen: list[str], attempt: Pass, ledger: Ledger, want: Room
    ) -> None:
        """Store the offers, send them, store the answers; give back what was not taken.

        Until the offers are stored, every hold goes back if anything fails. Once they
        are, they are active in the job record, so holds go back only for offers the
        nodes declined or did not answer, and the answers are stored.
        """
        try_no = len(failures(job))
        new = [
            Execution(exec_id=new_exec_id(), job_id=job.job_id, node_id=n, attempt=try_no)
            for n in chosen
        ]
        for execution in new:  # held by node in _schedule; now by execution too
            ledger.holding[execution.exec_id] = (execution.node_id, want)
        release = [e.exec_id for e in new]
        try:
            try:
                stored = await store_offers(self._store, job, new)
            finally:  # stored, they count in what the owner holds; else nothing was
                self.gate.discharge(job.owner, want, len(new))
            if not stored:
                return
            release = []
            answers = await self._offers.send(job, new)
            # An offer still unanswered keeps its room: the node may have taken it.
            release = [
                e.exec_id
                for e, a in zip(new, answers, strict=True)
                if not a.accepted and not a.unanswered
            ]
        finally:
            for exec_id in release:
                ledger.release_exec(exec_id)
            if release:
                self._capacity_back()
        for execution, answer in zip(new, answers, strict=True):
            if answer.accepted:
                self.placed += 1
            else:
                attempt.declined.append(f"{execution.node_id}: {answer.reason or 'declined'}")

    def _capacity_back(self) -> None:
        """A declined offer's capacity is free again: jobs that found none look again."""
        for job_id in self._starved:
            self._want(job_id)
        self._starved.clear()
        self._progress.set()

    async def _wait(self, job_id: str, why: str) -> None:
        """Nothing placeable now: the job waits (QUEUED), or fails once its queue time
        is up (see executions.wait)."""
        await self._store.change(job_id, functools.partial(wait, why=why, now=utcnow()))


def placement_histogram() -> Histogram:
    """Not in the global registry: each requester's metrics endpoint registers its own,
    which outlives the schedulers of its terms as leader."""
    return Histogram(
        "hive_scheduler_placement_seconds",
        "One scheduling decision for a job: filter, rank and its offers.",
        buckets=LATENCY_BUCKETS,
        registry=None,
    )
