"""The rules that turn executions into a job's state, where a write was cut short."""

from __future__ import annotations

from datetime import UTC, datetime

from hivectl.core.jobs import ExecState, ExecUpdate, Execution, Job, JobSpec, JobState
from requester.jobs.executions import apply_update, resettle

JOB = "j-00000000000000aa"
AT = datetime(2026, 11, 27, tzinfo=UTC)


def _job(state: JobState, *states: ExecState) -> Job:
    executions = [
        Execution(exec_id=f"e-{i:016x}", job_id=JOB, node_id="node-1", state=s)
        for i, s in enumerate(states)
    ]
    spec = JobSpec(engine="process", command=["true"], count=len(states))
    return Job(job_id=JOB, spec=spec, state=state, executions=executions)


def test_an_update_applied_before_still_brings_the_job_record_level() -> None:
    """The executions were stored COMPLETED, the job's record not (its stream was
    electing a leader): the update comes again and must finish the job."""
    behind = _job(JobState.RUNNING, ExecState.COMPLETED, ExecState.COMPLETED)
    again = ExecUpdate(
        node_id="node-1", seq=9, exec_id="e-0000000000000001", job_id=JOB,
        state=ExecState.COMPLETED, exit_code=0,
    )  # fmt: skip
    after = apply_update(behind, again, AT)
    assert after is not None and after.state is JobState.COMPLETED


def test_a_level_job_needs_no_write() -> None:
    running = _job(JobState.RUNNING, ExecState.RUNNING, ExecState.COMPLETED)
    assert resettle(running) is None
    assert resettle(_job(JobState.PENDING, ExecState.OFFERED)) is None
