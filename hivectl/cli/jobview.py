"""How `hivectl job …` shows jobs to people: table rows, the describe view, result lines."""

from __future__ import annotations

import shlex
from datetime import datetime

from hivectl.cli.output import NONE, age, human_bytes, human_cpu, plain_lines, timestamp
from hivectl.core.jobs import JOB_TERMINAL, ExecState, Execution, Job, JobSpec

COLUMNS = ["ID", "NAME", "TYPE", "ENGINE", "STATE", "EXECUTIONS", "OWNER", "CREATED"]
WIDE_COLUMNS = [*COLUMNS, "IMAGE", "COMMAND", "NODES", "REASON"]
QUEUE_COLUMNS = ["POSITION", "ID", "OWNER", "PRIORITY", "NAME", "STATE", "CREATED", "REASON"]
QUEUE_WIDE_COLUMNS = [*QUEUE_COLUMNS, "EXECUTIONS", "CPU", "MEMORY", "GPU"]
EXEC_COLUMNS = ["EXEC", "NODE", "ATTEMPT", "STATE", "EXIT", "STARTED", "ENDED", "ERROR"]
DESCRIBE_ROWS = 20  # executions a big job's describe lists; `job executions` has them all
_INTEREST = {ExecState.FAILED: 0, ExecState.LOST: 0, ExecState.RUNNING: 1, ExecState.STARTING: 1}
UNSUCCESSFUL = frozenset({ExecState.FAILED, ExecState.CANCELLED, ExecState.LOST})


def result_line(job: Job) -> str:
    """`Job j-… COMPLETED`, or `Job j-… FAILED: <reason>`."""
    reason = job.reason or _first_error(job)
    return f"Job {job.job_id} {job.state.value}" + (f": {reason}" if reason else "")


def status_text(job: Job) -> str:
    """The live line of a waiting `job submit`: the state and, while it waits, why
    (`j-…: QUEUED: no node has the docker executor enabled`)."""
    text = f"{job.job_id}: {job.state.value}"
    if job.spec.count > 1 and job.state not in JOB_TERMINAL:
        text = f"{text} ({exec_counts(job)})"
    return f"{text}: {job.reason}" if job.reason and job.state not in JOB_TERMINAL else text


def _first_error(job: Job) -> str:
    for execution in reversed(job.executions):
        if execution.error:
            return execution.error
    return ""


def exec_counts(job: Job) -> str:
    """Executions by state, in lifecycle order: `1/1 COMPLETED`, `2/3 RUNNING, 1/3 FAILED`."""
    counts = job.tally()
    if not counts:
        return NONE
    total = sum(counts.values())
    return ", ".join(
        f"{counts[state]}/{total} {state.value}" for state in ExecState if state in counts
    )


def cut_short(job: Job) -> int:
    """How many of the job's executions the reply left out (a big job's `get`)."""
    return max(0, sum(job.counts.values()) - len(job.executions)) if job.counts else 0


def command_text(spec: JobSpec) -> str:
    return shlex.join(spec.command) if spec.command else NONE


def job_nodes(job: Job) -> str:
    ran = {e.node_id for e in job.executions if e.state is not ExecState.REJECTED}
    return ",".join(sorted(ran | set(job.nodes))) or NONE


def job_row(job: Job, wide: bool, now: datetime) -> list[str]:
    spec = job.spec
    row = [
        job.job_id,
        spec.name or NONE,
        spec.type.value,
        spec.engine.value,
        job.state.value,
        exec_counts(job),
        job.owner,
        age(job.created_at, now),
    ]
    if wide:
        reason = " ".join(job.reason.split()) or NONE  # why it waits, or why it ended
        row += [spec.image or NONE, command_text(spec), job_nodes(job), reason]
    return row


def queue_row(job: Job, wide: bool, now: datetime) -> list[str]:
    """A waiting job, as `job list --queued` shows it."""
    spec = job.spec
    row = [
        str(job.position),
        job.job_id,
        job.owner,
        str(spec.priority),
        spec.name or NONE,
        job.state.value,
        age(job.created_at, now),
        " ".join(job.reason.split()) or NONE,
    ]
    if wide:
        asked = spec.resources
        memory = f"{asked.memory / 2**20:g}MiB" if asked.memory else NONE
        row += [exec_counts(job), f"{asked.cpu:g}", memory, str(asked.gpu)]
    return row


def shown_executions(job: Job, show_all: bool) -> list[Execution]:
    """The executions whose output to show: of the latest attempt, unless `show_all`.

    REJECTED ones never ran. An unsuccessful execution is replaced when another was
    created after it ended (a retry), and is then shown only with `show_all`.
    """
    ran = [e for e in job.executions if e.state is not ExecState.REJECTED]
    if show_all:
        return ran
    return [e for e in ran if not _replaced(e, ran)]


def _replaced(execution: Execution, executions: list[Execution]) -> bool:
    if execution.state not in UNSUCCESSFUL:
        return False
    ended = execution.ended_at or execution.updated_at
    return any(other.created_at >= ended for other in executions if other is not execution)


# -- describe ------------------------------------------------------------------------


def describe_lines(job: Job, now: datetime) -> list[str]:
    """A `kubectl describe`-style view: `Key:  value` lines, then the executions."""
    spec = job.spec
    fields = [
        ("ID", job.job_id),
        ("Name", spec.name or NONE),
        ("Type", spec.type.value),
        ("State", job.state.value),
        *([("Reason", job.reason)] if job.reason else []),
        ("Owner", job.owner),
        ("Engine", spec.engine.value),
        ("Image", spec.image or NONE),
        ("Command", command_text(spec)),
        ("Workdir", spec.workdir or NONE),
        ("Env", ", ".join(f"{k}={v}" for k, v in sorted(spec.env.items())) or NONE),
        ("Resources", resources_text(spec)),
        ("Constraints", spec.selector or NONE),
        ("Count", str(spec.count)),
        ("Timeout", _seconds(spec.timeout)),
        ("Queue timeout", _seconds(spec.queue_timeout)),
        ("Retries", str(spec.retries)),
        ("Network", spec.network if spec.engine.value == "docker" else NONE),
        ("Outputs", ", ".join(spec.outputs) or NONE),
        ("Created", timestamp(job.created_at, now)),
        ("Updated", timestamp(job.updated_at, now)),
    ]
    lines = [f"{name}:".ljust(15) + value for name, value in fields]
    notices = [f"  {e.exec_id}: {e.notice}" for e in job.executions if e.notice]
    return [
        *lines,
        *_exec_section(job, now),
        *(["Notices:", *notices] if notices else []),
    ]


def _exec_section(job: Job, now: datetime) -> list[str]:
    """The executions: a table of them all; for a big job, counts by state and the
    few worth a look first (failures, then running), with how to page the rest."""
    left_out = cut_short(job)
    if not left_out and len(job.executions) <= DESCRIBE_ROWS:
        return ["Executions:", *("  " + line for line in exec_table(job, now))]
    first = sorted(job.executions, key=lambda e: (_INTEREST.get(e.state, 3), e.exec_id))
    shown = job.model_copy(update={"executions": first[:DESCRIBE_ROWS]})
    more = left_out + len(job.executions) - len(shown.executions)
    return [
        f"Executions:    {exec_counts(job)}",
        *("  " + line for line in exec_table(shown, now)),
        f"  ... and {more} more: hivectl job executions {job.job_id} [--state STATE]",
    ]


def resources_text(spec: JobSpec) -> str:
    r = spec.resources
    parts = [
        f"cpu={human_cpu(r.cpu)}" if r.cpu else "",
        f"memory={human_bytes(r.memory)}" if r.memory else "",
        f"disk={human_bytes(r.disk)}" if r.disk else "",
        f"gpu={r.gpu}" if r.gpu else "",
    ]
    return ", ".join(part for part in parts if part) or NONE


def _seconds(value: float) -> str:
    return f"{value:g}s" if value else NONE


def exec_row(e: Execution, wide: bool, now: datetime) -> list[str]:
    """One execution as `job describe` and `job executions` show it."""
    return [
        e.exec_id,
        e.node_id,
        str(e.attempt),
        e.state.value,
        NONE if e.exit_code is None else str(e.exit_code),
        age(e.started_at, now),
        age(e.ended_at, now),
        " ".join(e.error.split()) or NONE,
    ]


def exec_table(job: Job, now: datetime) -> list[str]:
    if not job.executions:
        return ["<none yet>"]
    rows = [EXEC_COLUMNS, *(exec_row(e, False, now) for e in job.executions)]
    return plain_lines(rows)
