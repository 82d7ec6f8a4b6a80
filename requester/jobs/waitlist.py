"""`job list --queued`: every job waiting to be placed, in the order the scheduler
places them, each with its position and why it waits.

The order is the fair queue's (fairqueue.sort_key: priority, then the owner's fair
share as FairShare ranks it now, then submit order), over every unfinished job that
lacks executions; the reason is the owner's quota when that holds the job now, else
what the scheduler last wrote (no node fits, and why), else that it waits its turn.
Built on request, by the leader (it alone keeps the owners' usage): a listing costs a
sort of the waiting jobs, nothing on the path of a placement.
"""

from __future__ import annotations

from hivectl.core.jobs import Job
from requester.jobs.executions import QUOTA_REASON, missing
from requester.jobs.fairqueue import Place, sort_key
from requester.jobs.fairshare import FairShare
from requester.jobs.fenced import FencedJobs
from requester.jobs.ledger import Room
from requester.jobs.quotagate import QuotaGate

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
