"""Whose turn it is: the scheduler's queues of work, each in the fair queue's order.

- wanted: jobs to look at now (kicked, found by the tick, or let back in);
- waiting: jobs that found no room, let back in when executions end;
- held: per owner, jobs its running quota holds, let back in when its executions end.

A job is in one of them at most: wanted again, it leaves the others (it is looked at
anyway), so letting waiting jobs back in never has to pass over ones already wanted.

Backfill rule: a job that does not fit never blocks the queue: the scheduler goes on
to the next one, so a small job that fits runs beside a big one that waits for room.
When executions end, the best waiting jobs look again, as many as ended plus `spare`
more, so the room reaches the small jobs behind a big one that still does not fit. So
that smaller work cannot keep a big job out for good, a job that has waited for room
longer than `backfill_reserve_after` gets a node held for it (reserve.py), which says
what starvation risk remains.
"""

from __future__ import annotations

from collections.abc import Callable

from hivectl.core.jobs import Job
from requester.jobs.fairqueue import FairQueue, Place, Rank


class Turns:
    def __init__(self, rank: Rank, spare: int) -> None:
        self._rank = rank
        self._spare = spare
        self.wanted = FairQueue(rank)
        self.waiting = FairQueue(rank)
        self.held: dict[str, FairQueue] = {}

    def want(self, job: Job) -> None:
        self.settled(job.job_id, job.owner)
        self.wanted.push(job.job_id, Place.of(job))

    def next(self, busy: Callable[[str], bool]) -> str | None:
        """The next wanted job that `busy` does not pass over, taken out."""
        return self.wanted.pop(busy)

    def no_room(self, job: Job) -> None:
        self.waiting.push(job.job_id, Place.of(job))

    def over_quota(self, job: Job) -> None:
        self.waiting.discard(job.job_id)
        self.held.setdefault(job.owner, FairQueue(self._rank)).push(job.job_id, Place.of(job))

    def settled(self, job_id: str, owner: str | None) -> None:
        """Placed in full, finished, gone, or to be looked at again: it waits for
        nothing now."""
        self.waiting.discard(job_id)
        held = None if owner is None else self.held.get(owner)
        if owner is not None and held is not None:
            held.discard(job_id)
            if not held:
                del self.held[owner]

    def room_freed(self, executions: int, busy: Callable[[str], bool]) -> list[str]:
        """Executions ended: the jobs that found no room to look at again, best first."""
        back: list[str] = []
        for _ in range(executions + self._spare):
            job_id = self.waiting.pop(busy)  # one being placed keeps its place
            if job_id is None:
                break
            back.append(job_id)
        return back

    def quota_freed(self, owner: str, executions: int) -> list[str]:
        """The owner's executions ended: as many of its held jobs to look at again."""
        held = self.held.get(owner)
        back: list[str] = []
        while held is not None and len(back) < executions:
            job_id = held.pop()
            if job_id is None:
                break
            back.append(job_id)
        if held is not None and not held:
            del self.held[owner]
        return back
