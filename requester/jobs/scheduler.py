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
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from prometheus_client import Histogram

from hivectl.core.jobs import (
    JOB_TERMINAL,
    ExecState,
    Execution,
    Job,
    JobState,
    new_exec_id,
)
from hivectl.core.models import utcnow
from requester.jobs import placement
from requester.jobs.executions import (
    ACTIVE,
    failures,
    finish,
    mark_gone,
    mark_lost,
    missing,
    resettle,
    waiting_since,
)
from requester.jobs.fenced import Deposed, FencedJobs
from requester.jobs.ledger import Ledger, Room
from requester.jobs.offers import Offers
from requester.nodes.link import LATENCY_BUCKETS, NodeLink
from requester.nodes.liveness import Liveness
from requester.nodes.registry import Registry

log = logging.getLogger("hive.requester.scheduler")
# Jobs placed at once. Each waits mostly on two KV writes and its offers; a few in
# flight keep the requester busy deciding while others wait.
PARALLEL = 8


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
    ) -> None:
        self._store = store
        self._registry = registry
        self._liveness = liveness
        self._link = link
        self._interval = interval
        self._offer_timeout = offer_timeout
        self._parallel = max(1, parallel)
        self._scores = scores  # nodes' reliability, kept current by the usage feed
        self._tiers = tiers  # and the ranking tiers of those below a new node's
        self._wanted: dict[str, None] = {}  # ordered set: first kicked, first placed
        self._node_changes: list[tuple[str, bool]] = []  # (node, lost?)
        self._gone: list[tuple[str, dict[str, str]]] = []  # (node, {exec: job}) it lacks
        self._cancelled_lost: set[str] = set()
        self._offers = Offers(store, link, offer_timeout)
        self._busy: set[str] = set()  # jobs being placed now
        self._starved: set[str] = set()  # found no node while capacity was held in flight
        self._waiting: dict[str, None] = {}  # found no room, in the order they first did
        self._pass_ledger: Ledger | None = None  # the ledger of the pass running now
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # a kick, or a placement finished
        self._next_tick = 0.0
        self._task: asyncio.Task[None] | None = None
        self.placed = 0
        self.placement_seconds = placement_histogram()

    # -- inputs ---------------------------------------------------------------------
    def kick(self, job_id: str) -> None:
        self._wanted[job_id] = None
        self._wake.set()
        self._progress.set()

    def node_lost(self, node_id: str) -> None:
        self._node_changes.append((node_id, True))
        self._wake.set()
        self._progress.set()

    def node_back(self, node_id: str) -> None:
        self._node_changes.append((node_id, False))
        self._wake.set()
        self._progress.set()

    def ended(self, exec_ids: list[str]) -> None:
        """These executions ended: their room is free now, for this pass too, and as
        many jobs that found no room as executions ended look again, first come first
        (the tick still looks at every one)."""
        ledger = self._pass_ledger
        if ledger is not None:
            for exec_id in exec_ids:
                ledger.release_exec(exec_id)
        waiting = (j for j in self._waiting if j not in self._wanted and j not in self._busy)
        for job_id in list(itertools.islice(waiting, len(exec_ids))):
            self._wanted[job_id] = None
        self._wake.set()
        self._progress.set()

    def executions_gone(self, node_id: str, gone: dict[str, str]) -> None:
        """`node_id` does not hold these executions ({exec id: job id}) any more."""
        self._gone.append((node_id, gone))
        self._wake.set()
        self._progress.set()

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
        for job in self._store.unfinished():
            if resettle(job) is not None:  # a change cut short left the record behind
                try:
                    job = await self._store.change(job.job_id, resettle) or job
                except Deposed:
                    raise
                except Exception as exc:  # the store away: the next tick tries again
                    log.warning("job %s not brought level with its executions: %s", job.job_id, exc)
            if job.state not in JOB_TERMINAL and missing(job)[0]:
                self._wanted.setdefault(job.job_id, None)

    async def _drain(self) -> None:
        """Node changes first, then the wanted jobs, `parallel` at a time, one ledger."""
        await self._node_changes_now()
        if not self._wanted:
            return
        self._pass_ledger = ledger = self._ledger()
        try:
            async with asyncio.TaskGroup() as placing:
                while (job_id := await self._next_job()) is not None:
                    placing.create_task(self._place(job_id, ledger), name=f"place-{job_id}")
        finally:
            self._pass_ledger = None

    def _ledger(self) -> Ledger:
        """What the active executions of unfinished jobs hold, per node: from the
        store's index of them, so it costs what runs now, not every job ever kept."""
        ledger = Ledger()
        for node_id in self._store.active_nodes():
            for exec_id, job_id in self._store.active_on(node_id).items():
                record = self._store.record(job_id)
                if record is not None and record.state not in JOB_TERMINAL:
                    ledger.hold_exec(exec_id, node_id, Room.of(record.spec.resources))
        return ledger

    async def _node_changes_now(self) -> None:
        while self._gone:
            node_id, gone = self._gone.pop(0)
            await self._drop_gone(node_id, gone)
        while self._node_changes:
            node_id, lost = self._node_changes.pop(0)
            try:
                await (self._lose(node_id) if lost else self._welcome(node_id))
            except Exception:  # raised into the pass, it would cancel the placements in flight
                log.exception("handling node %s (%s) failed", node_id, "lost" if lost else "back")

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
            await self._node_changes_now()
            if loop.time() < self._next_tick and len(self._busy) < self._parallel:
                job_id = next((j for j in self._wanted if j not in self._busy), None)
                if job_id is not None:
                    del self._wanted[job_id]
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
                self._waiting.pop(job_id, None)
                return
            fitting, why = placement.candidates(
                job,
                self._registry.snapshot(),
                self._liveness,
                ledger,
                self._registry.labels,
                self._scores,
                self._tiers,
            )
            fitting = [c for c in fitting if c.node_id not in attempt.tried]
            chosen = placement.plan(job, need, nodes, fitting)
            if not chosen:
                if len(self._busy) > 1:  # others hold capacity that a decline may free
                    self._starved.add(job_id)
                self._waiting.setdefault(job_id, None)
                await self._wait(job_id, why or _declined(attempt))
                return
            attempt.tried.update(chosen)
            want = Room.of(job.spec.resources)
            for node_id in chosen:  # held before the first await: no other decision sees it
                ledger.hold(node_id, want)
            await self._offer(job, chosen, attempt, ledger, want)
        self._waiting.pop(job_id, None)  # gone, or finished

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
            if not await self._store_offers(job, new):
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

    async def _store_offers(self, job: Job, new: list[Execution]) -> bool:
        """The new executions stored OFFERED; False when the job changed under us."""
        before = missing(job)

        def add_offers(current: Job) -> Job | None:
            if missing(current) != before:  # changed under us: decide again
                return None
            return current.model_copy(update={"executions": [*current.executions, *new]})

        stored = await self._store.change(job.job_id, add_offers)
        ids = {e.exec_id for e in new}
        return stored is not None and ids <= {e.exec_id for e in stored.executions}

    def _capacity_back(self) -> None:
        """A declined offer's capacity is free again: jobs that found none look again."""
        for job_id in self._starved:
            self._wanted.setdefault(job_id, None)
        self._starved.clear()
        self._progress.set()

    async def _wait(self, job_id: str, why: str) -> None:
        """Nothing placeable now: the job waits (QUEUED), or fails once its queue time is up."""
        now = utcnow()

        def queue(job: Job) -> Job | None:
            if job.state in JOB_TERMINAL or missing(job)[0] == 0:
                return None
            limit = job.spec.queue_timeout
            # A batch bigger than the room there is waits while its executions run:
            # only a job with nothing running has waited in vain.
            running = any(e.state in ACTIVE for e in job.executions)
            if not running and now - waiting_since(job) >= timedelta(seconds=limit):
                return finish(job, JobState.FAILED, f"queue timeout ({limit:g}s): {why}")
            running = any(
                e.state in (ExecState.RUNNING, ExecState.COMPLETED) for e in job.executions
            )
            state = JobState.RUNNING if running else JobState.QUEUED
            if (job.state, job.reason) == (state, why):
                return None
            return job.model_copy(update={"state": state, "reason": why})

        await self._store.change(job_id, queue)

    # -- lost nodes -------------------------------------------------------------------
    async def _lose(self, node_id: str) -> None:
        for job_id in sorted(set(self._store.active_on(node_id).values())):
            log.warning("node %s lost: job %s loses its executions there", node_id, job_id)
            after = await self._store.change(job_id, lambda j: mark_lost(j, node_id))
            if after is not None and missing(after)[0]:
                self._wanted.setdefault(job_id, None)

    async def _drop_gone(self, node_id: str, gone: dict[str, str]) -> None:
        by_job: dict[str, set[str]] = {}
        for exec_id, job_id in gone.items():
            by_job.setdefault(job_id, set()).add(exec_id)
        reason = f"node {node_id} does not hold it (the node restarted or lost its state)"
        for job_id, exec_ids in by_job.items():
            try:
                change = functools.partial(mark_gone, exec_ids=frozenset(exec_ids), reason=reason)
                after = await self._store.change(job_id, change)
            except Exception:  # one job's trouble must not keep the others from moving
                log.exception("writing off executions of %s failed", job_id)
                continue
            if after is not None and missing(after)[0]:
                self._wanted.setdefault(job_id, None)

    async def _welcome(self, node_id: str) -> None:
        """A lost node is back: it must stop what was re-placed elsewhere."""
        stale = [
            e
            for job in self._store.jobs()
            for e in job.executions
            if e.node_id == node_id
            and e.state is ExecState.LOST
            and e.exec_id not in self._cancelled_lost
        ]
        self._cancelled_lost.update(e.exec_id for e in stale)
        if stale:
            self._link.cancel(stale, f"node {node_id} was lost; the execution was written off")


def _declined(attempt: Pass) -> str:
    if not attempt.declined:
        return "no node fits"
    shown = "; ".join(attempt.declined[:5]) + ("; ..." if len(attempt.declined) > 5 else "")
    return f"every fitting node declined ({shown})"


def placement_histogram() -> Histogram:
    """Not in the global registry: each requester's metrics endpoint registers its own,
    which outlives the schedulers of its terms as leader."""
    return Histogram(
        "hive_scheduler_placement_seconds",
        "One scheduling decision for a job: filter, rank and its offers.",
        buckets=LATENCY_BUCKETS,
        registry=None,
    )
