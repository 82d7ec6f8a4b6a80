"""The order in which the scheduler looks at waiting work: priority, fair share, FIFO.

Highest priority first; within a priority, the owner whose recent usage is least (its
rank, from FairShare, asked afresh at every pick, so owners take turns as their usage
grows); within an owner, the job submitted first. Jobs sit in one heap per (priority,
owner), so a pick costs the number of priorities in use plus the owners at the top one
(a few), and a log of the owner's jobs — never a pass over every waiting job.

`queued` lists every waiting job in that order for `job list --queued`, each with its
position and why it waits: the owner's quota when that holds it now, else what the
scheduler last wrote (no node fits, and why), else that it waits its turn. The leader
builds it on request (it alone keeps the owners' usage): a sort of the waiting jobs,
nothing on the path of a placement.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hivectl.core.jobs import Job
from requester.jobs.executions import QUOTA_REASON, missing
from requester.jobs.fairshare import FairShare
from requester.jobs.fenced import FencedJobs
from requester.jobs.ledger import Room
from requester.jobs.quotagate import QuotaGate

Rank = Callable[[str], tuple[float, float]]  # owner -> its fair-share key (less goes first)


@dataclass(frozen=True, slots=True)
class Place:
    """What decides a job's turn: its priority, its owner, and its submit order."""

    priority: int
    owner: str
    order: tuple[float, str]  # (created, job id): first come, first served

    @classmethod
    def of(cls, job: Job) -> Place:
        return cls(job.spec.priority, job.owner, (job.created_at.timestamp(), job.job_id))


def sort_key(place: Place, rank: Rank) -> tuple[int, tuple[float, float], tuple[float, str]]:
    """The queue's order as one key, for listing every waiting job at once."""
    return (-place.priority, rank(place.owner), place.order)


class FairQueue:
    def __init__(self, rank: Rank) -> None:
        self._rank = rank
        self._where: dict[str, Place] = {}  # the jobs queued now
        # priority -> owner -> heap of (order, job id), at most one entry per job (a
        # job's place never changes): a discarded job's entry stays until it reaches the
        # top (then dropped) or the job is pushed again (then it counts again), so a job
        # that leaves and comes back every tick does not grow the heap.
        self._levels: dict[int, dict[str, list[tuple[tuple[float, str], str]]]] = {}
        self._entered: set[str] = set()  # jobs with an entry in a heap

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._where))

    def push(self, job_id: str, place: Place) -> None:
        if job_id in self._where:
            return
        self._where[job_id] = place
        if job_id in self._entered:  # its entry is still in its heap
            return
        self._entered.add(job_id)
        owners = self._levels.setdefault(place.priority, {})
        heapq.heappush(owners.setdefault(place.owner, []), (place.order, job_id))

    def discard(self, job_id: str) -> None:
        self._where.pop(job_id, None)

    def pop(self, skip: Callable[[str], bool] | None = None) -> str | None:
        """The next job in order that `skip` does not pass over (taken out); None when
        there is none. Those passed over stay queued where they were."""
        passed: list[tuple[str, Place]] = []
        try:
            while (taken := self._take()) is not None:
                if skip is None or not skip(taken[0]):
                    return taken[0]
                passed.append(taken)
            return None
        finally:
            for job_id, place in passed:
                self.push(job_id, place)

    def _take(self) -> tuple[str, Place] | None:
        while self._levels:
            top = max(self._levels)
            owners = self._levels[top]
            best: tuple[tuple[float, float], str] | None = None
            for owner in list(owners):
                if not self._clean(owners[owner]):
                    del owners[owner]
                    continue
                key = (self._rank(owner), owner)
                if best is None or key < best:
                    best = key
            if best is None:
                del self._levels[top]
                continue
            _, job_id = heapq.heappop(owners[best[1]])
            self._entered.discard(job_id)
            return job_id, self._where.pop(job_id)
        return None

    def _clean(self, heap: list[tuple[tuple[float, str], str]]) -> bool:
        """Drop stale entries from the heap's top; False when nothing live is left."""
        while heap:
            if heap[0][1] in self._where:
                return True
            _, job_id = heapq.heappop(heap)
            self._entered.discard(job_id)
        return False


TURN = "waiting for its turn"


def queued(store: FencedJobs, share: FairShare, gate: QuotaGate) -> list[Job]:
    """The waiting jobs, first to be placed first, each with `position` and `reason`
    set (and its executions as counts, as `job list` shows them)."""
    ranks: dict[str, tuple[float, float]] = {}

    def rank(owner: str) -> tuple[float, float]:
        if owner not in ranks:
            ranks[owner] = share.rank(owner)
        return ranks[owner]

    waiting = [job for job in store.unfinished() if missing(job)[0]]
    waiting.sort(key=lambda job: sort_key(Place.of(job), rank))
    listed = []
    for position, job in enumerate(waiting, 1):
        _, over = gate.allows(job, Room.of(job.spec.resources))
        stale = job.reason.startswith(QUOTA_REASON)  # its quota held it; it no longer does
        reason = over or (TURN if stale else job.reason) or TURN
        update = {"position": position, "reason": reason, "executions": [], "counts": job.tally()}
        listed.append(job.model_copy(update=update))
    return listed
