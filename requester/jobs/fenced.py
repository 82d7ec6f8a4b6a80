"""The job store as a leader writes it, and the refusals of job writes.

A leader's writes carry its epoch (the lease revision it was elected with); a record a
newer leader wrote refuses them, and so does a lease this requester cannot prove (see
leadership.py). Reads pass through to the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from hivectl.core.jobs import Execution, Job
from requester.routing import Refusal

if TYPE_CHECKING:
    from requester.jobs.records import JobStore

Change = Callable[[Job], Job | None]  # None: nothing to change


class JobError(Refusal):
    """A request about jobs that is refused: `code` for counters and error replies."""


class Deposed(Exception):
    """A newer leader decides for this job now (or our lease cannot be proved): this
    requester must not write it."""


class FencedJobs:
    """The job store as the leader writes it: every record it writes carries the
    leader's epoch, and a change is refused once a newer leader has written the job or
    an execution it changes, or once the lease cannot be proved (see leadership.py)."""

    def __init__(self, store: JobStore, epoch: int, valid: Callable[[], bool]) -> None:
        self.store = store
        self.epoch = epoch
        self._valid = valid

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def unfinished(self) -> list[Job]:
        return self.store.unfinished()

    def jobs(self) -> Iterable[Job]:
        return self.store.jobs()

    def record(self, job_id: str) -> Job | None:
        return self.store.record(job_id)

    def execution(self, job_id: str, exec_id: str) -> Execution | None:
        return self.store.execution(job_id, exec_id)

    async def fresh_exec(self, job_id: str, exec_id: str) -> Execution | None:
        return await self.store.fresh_exec(job_id, exec_id)

    def active_on(self, node_id: str) -> dict[str, str]:
        return self.store.active_on(node_id)

    def job_of(self, exec_id: str) -> str | None:
        return self.store.job_of(exec_id)

    def active_nodes(self) -> list[str]:
        return self.store.active_nodes()

    async def fresh(self, job_id: str) -> Job | None:
        return await self.store.fresh(job_id)

    async def change(self, job_id: str, change: Change) -> Job | None:
        if not self._valid():
            raise Deposed(f"epoch {self.epoch} cannot prove its lease")
        return await self.store.change(job_id, change, epoch=self.epoch)
