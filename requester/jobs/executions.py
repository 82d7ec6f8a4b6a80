"""The rules that turn executions, and the updates nodes send of them, into a job state.

Updates arrive through the HIVE_EXEC stream on a durable consumer (consumer.py), so what
a node sent while no requester ran is applied when one starts. Every rule is a pure function
of the job record: applying an update twice, or after a crash and a redelivery, writes
nothing the second time, and since what to place is derived from the record (never
from the update that caused it), a redelivered failure cannot place a second retry.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from hivectl.core.jobs import (
    JOB_TERMINAL,
    ExecState,
    ExecUpdate,
    Execution,
    Job,
    JobState,
    JobType,
    Measured,
)
from hivectl.core.models import utcnow

if TYPE_CHECKING:
    pass

log = logging.getLogger("hive.requester.executions")
QUOTA_REASON = "quota: "  # how the reason of every quota hold begins
ES = ExecState
ACTIVE = frozenset({ES.OFFERED, ES.ACCEPTED, ES.STARTING, ES.RUNNING})
_RANK = {ES.OFFERED: 0, ES.ACCEPTED: 1, ES.STARTING: 2, ES.RUNNING: 3}
# What a node may report. ACCEPTED repeats what its offer reply said (harmless: states
# only move forward); OFFERED, LOST and REJECTED are the requester's words alone.
FROM_NODE = frozenset({ES.ACCEPTED, ES.STARTING, ES.RUNNING, ES.COMPLETED, ES.FAILED, ES.CANCELLED})
STOPPED_BY_NODE = "stopped by its node: "  # the error of work a node stopped unasked
MOVED_OFF = "moved off its node: "  # the error of work a drain took off its node
EVERY_NODE = -1  # an ops job not placed yet: one execution on every matching node


# -- rules ------------------------------------------------------------------------------
def advance(
    execution: Execution,
    state: ExecState,
    at: datetime,
    exit_code: int | None = None,
    error: str = "",
    notice: str = "",
    measured: Measured | None = None,
) -> Execution | None:
    """`execution` moved to `state`; None unless that is a move forward (states never regress)."""
    if execution.state not in ACTIVE:
        return None
    if state in ACTIVE and _RANK[state] <= _RANK[execution.state]:
        return None
    update: dict[str, object] = {"state": state, "updated_at": at}
    if state is ES.RUNNING and execution.started_at is None:
        update["started_at"] = at
    if state not in ACTIVE:
        update.update(ended_at=at, exit_code=exit_code, error=error[:1024], notice=notice)
        if measured is not None:
            update["measured"] = measured
    return execution.model_copy(update=update)


def with_exec(job: Job, execution: Execution) -> Job:
    executions = [execution if e.exec_id == execution.exec_id else e for e in job.executions]
    return job.model_copy(update={"executions": executions})


@dataclass(slots=True)
class Tally:
    """What the rules ask of a job's executions, found in one pass over them."""

    failures: list[Execution] = field(default_factory=list)  # FAILED or LOST
    live: Counter[str] = field(default_factory=Counter)  # node -> active or COMPLETED there
    avoid: set[str] = field(default_factory=set)  # nodes where it failed, was lost or refused
    completed: int = 0
    active: int = 0
    running: int = 0


_TALLIES: dict[int, tuple[list[Execution], Tally]] = {}
_TALLIES_KEPT = 64


def tally(job: Job) -> Tally:
    """The job's Tally. A decision asks several rules about the same executions (a batch
    of thousands): the list is walked once, and the answer kept while the list lives."""
    executions = job.executions
    known = _TALLIES.get(id(executions))
    if known is not None and known[0] is executions:
        return known[1]
    counted = Tally()
    for e in executions:
        state = e.state
        if state in ACTIVE:
            counted.active += 1
            counted.running += state is ES.RUNNING
            counted.live[e.node_id] += 1
        elif state is ES.COMPLETED:
            counted.completed += 1
            counted.live[e.node_id] += 1
        elif state in (ES.FAILED, ES.LOST):
            counted.failures.append(e)
            counted.avoid.add(e.node_id)
        elif state is ES.REJECTED:
            counted.avoid.add(e.node_id)
    if len(_TALLIES) >= _TALLIES_KEPT:
        del _TALLIES[next(iter(_TALLIES))]
    _TALLIES[id(executions)] = (executions, counted)
    return counted


def failures(job: Job) -> list[Execution]:
    """Executions that count against `retries`: the work failed or its node was lost."""
    return tally(job).failures


def node_stopped(execution: Execution) -> bool:
    """Stopped by its node, unasked (the node needs no cancel for it)."""
    return execution.state is ES.CANCELLED and execution.error.startswith(STOPPED_BY_NODE)


def missing(job: Job) -> tuple[int, frozenset[str] | None]:
    """How many executions to place now and, for an ops job, on which nodes."""
    counted = tally(job)
    if job.state in JOB_TERMINAL or len(counted.failures) > job.spec.retries:
        return 0, None
    if job.spec.type is JobType.BATCH:
        return max(0, job.spec.count - counted.active - counted.completed), None
    targets = {e.node_id for e in job.executions if e.state is not ES.REJECTED}
    if not targets:
        return EVERY_NODE, None
    need = frozenset(targets - set(counted.live))
    return len(need), need


def waiting_since(job: Job) -> datetime:
    """Since when the job has wanted a node: its queue timeout counts from its last
    progress (an execution that ended, however it ended, short of a node's refusal), or
    from the end of a quota hold."""
    ended = [
        e.ended_at for e in job.executions if e.ended_at is not None and e.state is not ES.REJECTED
    ]
    held = [job.waiting_from] if job.waiting_from is not None else []
    return max([job.created_at, *ended, *held])


def wait(job: Job, why: str, now: datetime) -> Job | None:
    """Nothing placeable now (`why`): the job waits (QUEUED, or RUNNING with some of it
    placed), or fails once its queue time is up; None when that changes nothing.

    The queue timeout is how long a job may wait for a node: time its owner's quota
    holds it does not count (it waits for its owner's own work), and the clock starts
    again when a hold ends."""
    if job.state in JOB_TERMINAL or missing(job)[0] == 0:
        return None
    limit = job.spec.queue_timeout
    held, was_held = why.startswith(QUOTA_REASON), job.reason.startswith(QUOTA_REASON)
    update: dict[str, object] = {"reason": why}
    if was_held and not held:
        update["waiting_from"] = now
    # A batch bigger than the room there is waits while its executions run: only a job
    # with nothing running has waited in vain.
    running = any(e.state in ACTIVE for e in job.executions)
    waited = now - waiting_since(job) >= timedelta(seconds=limit)
    if not running and not held and not was_held and waited:
        return finish(job, JobState.FAILED, f"queue timeout ({limit:g}s): {why}")
    running = any(e.state in (ES.RUNNING, ES.COMPLETED) for e in job.executions)
    update["state"] = JobState.RUNNING if running else JobState.QUEUED
    if (job.state, job.reason) == (update["state"], why):
        return None
    return job.model_copy(update=update)


def failure_reason(execution: Execution) -> str:
    if execution.state is ES.LOST:
        return f"node {execution.node_id} was lost"
    error, code = execution.error or "no error given", execution.exit_code
    # Agents often say "exit code N" themselves; the code is then not repeated.
    exit_text = "" if code is None or f"exit code {code}" in error else f" (exit {code})"
    return f"execution {execution.exec_id} on {execution.node_id} failed: {error}{exit_text}"


def finish(job: Job, state: JobState, reason: str) -> Job:
    """The job ended: its active executions are CANCELLED (the store sends the cancels)."""
    now = utcnow()
    executions = [
        (advance(e, ES.CANCELLED, now, error=reason) or e) if e.state in ACTIVE else e
        for e in job.executions
    ]
    return job.model_copy(update={"state": state, "reason": reason, "executions": executions})


def settle(job: Job) -> Job:
    """The job's state as its executions now say (QUEUED reasons are the scheduler's)."""
    if job.state in JOB_TERMINAL:
        return job
    counted = tally(job)
    failed = counted.failures
    if len(failed) > job.spec.retries:
        last = max(failed, key=lambda e: e.ended_at or e.updated_at)
        return finish(job, JobState.FAILED, failure_reason(last))
    done = counted.completed
    need, _ = missing(job)
    if done and need == 0 and not counted.active:
        return finish(job, JobState.COMPLETED, "")
    if done or counted.running:
        reason = "" if need == 0 else job.reason
        return job.model_copy(update={"state": JobState.RUNNING, "reason": reason})
    if job.state is JobState.QUEUED and need == 0:
        return job.model_copy(update={"state": JobState.PENDING, "reason": ""})
    return job


def apply_update(job: Job, update: ExecUpdate, at: datetime) -> Job | None:
    """The job after a node's update; None when it changes nothing."""
    return apply_updates(job, [(update, at)])


def apply_updates(job: Job, updates: list[tuple[ExecUpdate, datetime]]) -> Job | None:
    """The job after nodes' updates, in order (one pass, however many: a consumer
    applies a fetched batch at once); None when they change nothing."""
    if job.state in JOB_TERMINAL:
        return None
    executions = list(job.executions)
    where = {e.exec_id: i for i, e in enumerate(executions)}
    moved_any = False
    for update, at in updates:
        i = where.get(update.exec_id)
        if i is None:
            continue
        state, error = update.state, update.error
        if state is ES.CANCELLED:  # nobody asked: the node stopped it as it shut down
            error = f"{STOPPED_BY_NODE}{error or 'no reason given'}"
        moved = advance(
            executions[i], state, at, update.exit_code, error, update.notice, update.measured
        )
        if moved is not None:
            executions[i], moved_any = moved, True
    if not moved_any:  # applied before, maybe by a change whose job write failed
        return resettle(job)
    return settle(job.model_copy(update={"executions": executions}))


def resettle(job: Job) -> Job | None:
    """The job with the state its executions say, or None when it has it already.

    A change writes executions before the job's own record, so one cut short (a stream
    electing a leader) can leave the record behind them; applying the same update again
    then moves no execution, and this brings the record level."""
    settled = settle(job)
    same = (settled.state, settled.reason) == (job.state, job.reason)
    return None if same and settled.executions is job.executions else settled


def mark_lost(job: Job, node_id: str) -> Job | None:
    """Every active execution on `node_id` is LOST; None when there are none."""
    now = utcnow()
    lost = [e for e in job.executions if e.node_id == node_id and e.state in ACTIVE]
    if not lost or job.state in JOB_TERMINAL:
        return None
    for execution in lost:
        gone = advance(execution, ES.LOST, now, error=f"node {node_id} was lost")
        job = with_exec(job, gone or execution)
    return settle(job)


def mark_gone(job: Job, exec_ids: frozenset[str], reason: str) -> Job | None:
    """These executions are not on their node (it lost them: a crash, lost state): they
    end CANCELLED as stopped by the node, so the work is placed again without a retry."""
    return _cancel_active(job, exec_ids, f"{STOPPED_BY_NODE}{reason}")


def mark_moved(job: Job, exec_ids: frozenset[str], reason: str) -> Job | None:
    """These executions are moved off their node (a drain): they end CANCELLED, as work
    an agent stops at shutdown does, so the work is placed again elsewhere without using
    a retry. Unlike that work, the node still runs them: the store tells it to stop."""
    return _cancel_active(job, exec_ids, f"{MOVED_OFF}{reason}")


def _cancel_active(job: Job, exec_ids: frozenset[str], error: str) -> Job | None:
    """The job with those of `exec_ids` still active CANCELLED (not a failure: no retry
    is used); None when none is active."""
    if job.state in JOB_TERMINAL:
        return None
    now = utcnow()
    ended = [e for e in job.executions if e.exec_id in exec_ids and e.state in ACTIVE]
    for execution in ended:
        job = with_exec(job, advance(execution, ES.CANCELLED, now, error=error) or execution)
    return settle(job) if ended else None


# -- the consumer -----------------------------------------------------------------------
