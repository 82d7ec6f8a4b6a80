"""One usage record per ended execution, made from the job record alone.

Whoever writes an execution's end (the leader applying a node's update or writing off a
lost node, any requester stopping a job) makes its record from what it wrote, so the
record says what the job store says. Offers a node declined (REJECTED) never ran and
make none.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from hivectl.core.jobs import ExecState, Execution, Job
from hivectl.core.usage import Fault, UsageRecord
from requester.jobs.executions import ACTIVE, STOPPED_BY_NODE

if TYPE_CHECKING:
    from requester.jobs.records import JobStore

ES = ExecState


def fault_of(execution: Execution) -> Fault:
    """Whose doing the execution's end was, for its node's reliability.

    LOST: the node went away with it. A FAILED execution with an exit code ran and
    failed on its own (a non-zero exit, its timeout); without one the node could not
    run it (an executor or engine error, the agent's internal error). CANCELLED by its
    node unasked (it shut down, it lost the execution it had accepted) is the node's
    doing too; cancelled by a user, a drain or the job's end is no one's fault.
    """
    if execution.state is ES.LOST:
        return Fault.LOST
    if execution.state is ES.FAILED and execution.exit_code is None:
        return Fault.NODE
    if execution.state is ES.CANCELLED and execution.error.startswith(STOPPED_BY_NODE):
        return Fault.NODE
    return Fault.NONE


def usage_record(job: Job, execution: Execution) -> UsageRecord | None:
    """The record of an ended execution; None while it runs, or if it never was taken."""
    if execution.state in ACTIVE or execution.state is ES.REJECTED:
        return None
    ended = execution.ended_at or execution.updated_at
    started = execution.started_at
    wall = max(0.0, (ended - started).total_seconds()) if started is not None else 0.0
    resources = job.spec.resources
    return UsageRecord(
        exec_id=execution.exec_id,
        job_id=job.job_id,
        node_id=execution.node_id,
        user=job.owner,
        state=execution.state,
        fault=fault_of(execution),
        started_at=started,
        ended_at=ended,
        wall_seconds=wall,
        cpu=float(resources.cpu),
        memory=resources.memory,
        gpu=resources.gpu,
        measured=execution.measured,
    )


def usage_records(job: Job, ended: list[Execution]) -> list[UsageRecord]:
    """Records of `ended`, executions of `job` that a write has just ended."""
    return [r for e in ended if (r := usage_record(job, e)) is not None]


def ended_since(
    store: JobStore, cutoff: datetime, known: Callable[[str], bool]
) -> list[UsageRecord]:
    """Records of the executions the store has ended since `cutoff` that `known` does
    not know: what a new leader publishes again, in case the requester that wrote their
    end died before its record was stored (the stream drops those that were)."""
    records = []
    for execution in store.executions():
        ended = execution.ended_at
        if ended is None or ended < cutoff or known(execution.exec_id):
            continue
        job = store.record(execution.job_id)
        record = None if job is None else usage_record(job, execution)
        if record is not None:
            records.append(record)
    return records
