"""A follower places the jobs submitted to it while nothing waits; the leader the rest.

Only the leader keeps the queue in order: fair share, quotas, priorities and the node
held for a big job decide something only when jobs wait for room. While none does,
every job is placed as it comes and order decides nothing, so a follower may place a
job submitted to it itself, as Omega's schedulers share a cluster: optimistically,
each from its own copy of the cluster's state, with the node as the judge of what fits
(a node declines an offer it has no room for). A second requester then adds placement
capacity, where it would otherwise only take requests off the leader.

A follower takes a job at submit, before storing it: the record names it the job's
`placer`. It takes one only when
- another requester leads and was heard within a lease: that leader's epoch goes with
  every write and offer, so a newer leader fences the follower out exactly as it
  fences out the old leader (leadership.py);
- no job is QUEUED (waiting for room or for its owner's quota): then order matters,
  and the leader decides everything;
- the job is a batch job whose owner has no quota;
- fewer than PARALLEL of its placements are in flight.
It places the job once, as the leader would (the same filters, ranking and offers).
Short of every execution accepted (no room by its count, a decline, no answer, a lost
race, a newer epoch), it hands the job to the leader: it clears `placer` and nudges it.

The leader leaves a job another requester took alone for `grace` (twice the offer
timeout) from when it first saw it, by its own clock: a follower that died or froze
mid-placement loses the job then, and its unanswered offers are withdrawn like any
stale offer (offers.py). Once placed, the job is like any other: the leader applies
the nodes' updates (HIVE_EXEC) and counts the room its executions hold.

A follower counts room as the leader does: from the job records (every requester's
placements), rebuilt every `interval`, plus what it placed itself since. What the
leader offers meanwhile it learns at the next rebuild; two offers for the same last
room are settled by the node, which declines what it has no room for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

from hivectl.core.jobs import JOB_TERMINAL, Execution, Job, JobState, JobType, new_exec_id
from hivectl.core.quotas import Quota
from requester.jobs import placement
from requester.jobs.executions import failures, missing
from requester.jobs.fenced import Deposed, FencedJobs
from requester.jobs.ledger import Ledger, Room, held_in
from requester.jobs.offers import Offers, store_offers
from requester.jobs.records import JobStore
from requester.nodes.link import NodeLink
from requester.nodes.liveness import Liveness
from requester.nodes.registry import Registry

log = logging.getLogger("hive.requester.assist")
PARALLEL = 64  # placements in flight here; jobs submitted past that go to the leader
NO_QUOTA = Quota()


class Assist:
    """The follower's side: takes jobs at submit (`takes`), then places them (`place`)."""

    def __init__(
        self,
        name: str,
        store: JobStore,
        registry: Registry,
        liveness: Liveness,
        link: NodeLink,
        *,
        leader: Callable[[], tuple[str, int]],
        leading: Callable[[], bool],
        quotas: Callable[[str], Quota],
        nudge: Callable[[str], None],
        offer_timeout: float,
        interval: float,
        scores: Mapping[str, float] = placement.NO_SCORES,
        tiers: Mapping[str, int] = placement.NO_TIERS,
        parallel: int = PARALLEL,
    ) -> None:
        self.name = name
        self._store = store
        self._registry = registry
        self._liveness = liveness
        self._link = link
        self._leader = leader  # (name, epoch) of the leader heard lately, or ("", 0)
        self._leading = leading
        self._quotas = quotas
        self._nudge = nudge
        self._offer_timeout = offer_timeout
        self._interval = interval  # between rebuilds of the ledger from the records
        self._scores = scores
        self._tiers = tiers
        self._parallel = parallel
        self._tasks: set[asyncio.Task[None]] = set()
        self._ledger = Ledger()
        self._rebuild_at = 0.0
        self._start = 0  # where the next sample of nodes begins, as the scheduler's
        self.placed = 0  # jobs this follower placed whole
        self.left: Counter[str] = Counter()  # jobs submitted here left to the leader, by why
        self.handed_over = 0  # jobs it took and then left to the leader

    def takes(self, job: Job) -> bool:
        """Whether this requester places `job` itself (asked before it is stored)."""
        if self._leading():
            return False
        why = self._why_not(job)
        if why:
            self.left[why] += 1
        return not why

    def _why_not(self, job: Job) -> str:
        if job.spec.type is not JobType.BATCH:
            return "ops_job"
        if self._store.owners.queued():
            return "jobs_waiting"
        if self._quotas(job.owner) != NO_QUOTA:
            return "quota"
        if len(self._tasks) >= self._parallel:
            return "busy"
        return "" if self._leader()[1] > 0 else "no_leader"

    def placer(self, job: Job) -> str:
        """Who places a job submitted here: this requester (see `takes`), or "" (the
        leader). Asked before the job is stored: its record says it."""
        return self.name if self.takes(job) else ""

    def created(self, job_id: str) -> bool:
        """A job stored here: True when this requester took it, and now places it."""
        record = self._store.record(job_id)
        if record is None or record.placer != self.name:
            return False
        self.place(job_id)
        return True

    def place(self, job_id: str) -> None:
        """Place a job it took, in the background (the submit is answered meanwhile)."""
        task = asyncio.create_task(self._place(job_id), name=f"assist-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, timeout: float) -> None:
        """Placements in flight finish, for up to `timeout` seconds; then are cut
        short (the leader takes what they left once their grace is up)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _place(self, job_id: str) -> None:
        epoch = self._leader()[1]
        try:
            if epoch and await self._try(job_id, epoch):
                return
        except Deposed:  # a newer leader (or none heard): it decides
            log.debug("job %s left to the leader: epoch %d is not the leader's", job_id, epoch)
        except Exception:  # the store away, say: the leader places it
            log.exception("placing job %s failed; left to the leader", job_id)
        await self._hand_over(job_id)

    async def _try(self, job_id: str, epoch: int) -> bool:
        """One placement of the whole job; False when it must go to the leader."""
        job = self._store.get(job_id)
        if job is None or job.placer != self.name or job.state in JOB_TERMINAL:
            return True  # stopped, or taken over: nothing of ours to do
        if self._leading():
            return True  # elected meanwhile: its scheduler places the job
        need, nodes = missing(job)
        if need == 0:
            return True
        chosen = self._choose(job, need, nodes)
        if len(chosen) < need:
            return False
        want = Room.of(job.spec.resources)
        new = [
            Execution(exec_id=new_exec_id(), job_id=job_id, node_id=n, attempt=len(failures(job)))
            for n in chosen
        ]
        ledger = self._ledger  # this placement's, though a rebuild replaces it meanwhile
        for execution in new:  # held before the first await: the next job sees them
            ledger.hold_exec(execution.exec_id, execution.node_id, want)
        # Its writes and offers carry the leader's epoch, and stop once that is not it.
        fenced = FencedJobs(self._store, epoch, lambda: self._leader()[1] == epoch)
        kept: list[str] = []
        try:
            if not await store_offers(fenced, job, new):
                return False
            answers = await Offers(fenced, self._link, self._offer_timeout).send(job, new)
            # Taken, or perhaps taken (no answer even to the withdrawal): still held.
            kept = [
                e.exec_id for e, a in zip(new, answers, strict=True) if a.accepted or a.unanswered
            ]
        finally:
            for execution in new:
                if execution.exec_id not in kept:
                    ledger.release_exec(execution.exec_id)
        whole = all(a.accepted for a in answers)
        self.placed += whole
        return whole

    def _choose(self, job: Job, need: int, nodes: frozenset[str] | None) -> list[str]:
        now = time.monotonic()
        if now >= self._rebuild_at:  # what every requester placed, as stored now
            self._ledger, self._rebuild_at = held_in(self._store), now + self._interval
        sample = placement.sample_size(need, nodes)
        fitting, _ = placement.candidates(
            job,
            self._registry.listed(),
            self._liveness,
            self._ledger,
            self._registry.labels,
            self._scores,
            self._tiers,
            sample=sample,
            start=self._start,
        )
        self._start += sample
        return placement.plan(job, need, nodes, fitting)

    async def _hand_over(self, job_id: str) -> None:
        """The job is the leader's to place: `placer` cleared, the leader told."""
        self.handed_over += 1

        def release(job: Job) -> Job | None:
            # With offers stored, the leader places what is missing as for any job.
            if job.placer != self.name or job.executions:
                return None
            return job.model_copy(update={"placer": ""})

        try:
            await self._store.change(job_id, release)
        except Exception as exc:  # the leader takes it once its grace is up
            log.warning("job %s not handed to the leader (it takes it in time): %s", job_id, exc)
        self._nudge(job_id)


class Claims:
    """The leader's side: the jobs another requester took and may be placing now.

    Such a job is left alone while it is PENDING with no executions, for `grace` from
    when the leader first saw it (its own clock). Once its placer stored offers, what
    is missing later (a decline, a failure to retry) is the leader's like any job's."""

    def __init__(self, me: str, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._me = me
        self._grace = grace
        self._clock = clock
        self._seen: dict[str, float] = {}  # job id -> when first seen taken, oldest first
        self.left = 0  # jobs seen taken by another requester
        self.taken_over = 0  # of those, placed here once their grace was up

    def theirs(self, job: Job) -> bool:
        if not job.placer or job.placer == self._me:
            return False
        if job.executions or job.state is not JobState.PENDING:
            return False
        now = self._clock()
        self._forget_old(now)
        seen = self._seen.setdefault(job.job_id, now)
        if seen == now:
            self.left += 1
        if now - seen < self._grace:
            return True
        if self._seen.pop(job.job_id, None) is not None:
            self.taken_over += 1
            log.warning(
                "job %s: requester %s took it %gs ago and placed nothing; placing it here",
                job.job_id, job.placer, now - seen, extra={"job_id": job.job_id},
            )  # fmt: skip
        return False

    def _forget_old(self, now: float) -> None:
        """Entries of jobs placed long since (most of them) go after a few graces."""
        while self._seen:
            oldest = next(iter(self._seen))
            if now - self._seen[oldest] < 4 * self._grace:
                return
            del self._seen[oldest]
