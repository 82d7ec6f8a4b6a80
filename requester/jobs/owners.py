"""What the job store tells of each owner as records come and go: its jobs that wait to
start (for the queued-jobs quota, on every requester) and its executions that hold
room (FairShare: usage for the fair queue and held room for quotas, on the leader).

Each record taken in is one O(1) step here; nothing is ever recounted by a scan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from hivectl.core.jobs import Execution, Job, JobState
from requester.jobs.executions import ACTIVE
from requester.jobs.fairshare import FairShare
from requester.jobs.ledger import Room

WAITING = frozenset({JobState.PENDING, JobState.QUEUED})  # what the queued-jobs quota counts


class Owners:
    def __init__(self) -> None:
        # Set by the requester; fed while its store decodes executions (as leader).
        self.share: FairShare | None = None
        self.rebuilding = False  # every record is being taken in again (a new leader)
        self._waiting_owner: dict[str, str] = {}  # job id -> owner, of waiting jobs
        self._waiting: Counter[str] = Counter()

    def waiting(self, owner: str) -> int:
        """The owner's jobs that wait to start (PENDING or QUEUED), as stored now."""
        return self._waiting[owner]

    def reset_share(self) -> None:
        if self.share is not None:
            self.share.reset()

    def job(self, job_id: str, job: Job | None) -> None:
        """A job record taken in (None: gone)."""
        owner = self._waiting_owner.pop(job_id, None)
        if owner is not None:
            self._waiting[owner] -= 1
            if not self._waiting[owner]:
                del self._waiting[owner]
        if job is not None and job.state in WAITING:
            self._waiting_owner[job_id] = job.owner
            self._waiting[job.owner] += 1

    def execution(
        self,
        job_id: str,
        exec_id: str,
        execution: Execution | None,
        record: Callable[[str], Job | None],
    ) -> None:
        """An execution record taken in (None: gone): its owner's usage follows it as
        it begins holding room or stops. `record(job_id)` is the job's own record."""
        share = self.share
        if share is None:
            return
        active = execution is not None and execution.state in ACTIVE
        if not active:
            share.ended(exec_id)
        if execution is None or (active and share.running(exec_id)):
            return
        if not active and not self.rebuilding:  # an ended one: counted while it ran
            return
        job = record(job_id)
        if job is None:
            return
        room = Room.of(job.spec.resources)
        began = execution.created_at.timestamp()
        if active:
            share.began(exec_id, job.owner, room, since=began)
        elif execution.ended_at is not None:
            share.used(job.owner, room, began, execution.ended_at.timestamp())
