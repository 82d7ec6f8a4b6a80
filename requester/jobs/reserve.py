"""Reservations: the backfill rule's guard against starving a big job.

Backfill lets a job that fits run beside one that does not, so a big job could wait as
long as smaller work keeps taking the room it needs. A job that has waited for room
longer than `[scheduler] backfill_reserve_after` (and found none again) gets one node
held for it: an eligible node it would fit on once emptied, the one with the most free
room now (and the same node while it stays eligible). While held, no other batch job
is placed there, so the node drains until the big
job fits; then it is placed and the hold ends. One hold at a time (the first job found
due), and it ends too when the job ends, is held by its owner's quota, or is placed.

What remains: a hold is of one node, for one job at a time; a job bigger than every
node's allocatable gets none (no node would ever fit it); and a big job still waits
for the work on its node to end, however long that runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from hivectl.core.jobs import JOB_TERMINAL, Job, JobType
from requester.jobs.executions import missing, waiting_since

log = logging.getLogger("hive.requester.scheduler")


@dataclass(frozen=True, slots=True)
class Held:
    job_id: str
    node_id: str


class Reservations:
    def __init__(self, after: float) -> None:
        self.after = after  # seconds a job waits for room before a node is held (0: never)
        self.held: Held | None = None

    def kept_from(self, job: Job) -> str | None:
        """The node held for another job, which this one may not use (an ops job, one
        execution on every matching node, uses it all the same)."""
        held = self.held
        if held is None or held.job_id == job.job_id or job.spec.type is not JobType.BATCH:
            return None
        return held.node_id

    def why_kept(self, node_id: str) -> str:
        held = self.held
        assert held is not None
        return (
            f"node {node_id} is held for job {held.job_id}, which waited over "
            f"{self.after:g}s for room"
        )

    def due(self, job: Job, now: datetime) -> bool:
        """Whether the job, which found no room, is to have a node held: holds are on,
        none is held for another job, it is a batch job, and it waited long enough."""
        if not self.after or job.spec.type is not JobType.BATCH:
            return False
        if self.held is not None and self.held.job_id != job.job_id:
            return False
        return (now - waiting_since(job)).total_seconds() >= self.after

    def hold(self, job_id: str, node_id: str) -> None:
        if self.held != (held := Held(job_id, node_id)):
            log.info("node %s is held for job %s (waited over %gs for room)",
                     node_id, job_id, self.after)  # fmt: skip
            self.held = held

    def release(self, job_id: str) -> None:
        if self.held is not None and self.held.job_id == job_id:
            log.info("the hold of node %s for job %s ends", self.held.node_id, job_id)
            self.held = None

    def check(self, job: Job | None) -> None:
        """The held job as stored now (None: gone): a hold for nothing to place ends."""
        held = self.held
        if held is None:
            return
        if job is None or job.state in JOB_TERMINAL or missing(job)[0] == 0:
            self.release(held.job_id)
