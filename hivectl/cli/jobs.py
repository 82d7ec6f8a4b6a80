"""`hivectl job …`: submit jobs, list and inspect them, read their logs and results.

The module whose `app` hivectl mounts for the noun. What `job submit` does after
checking its command line (an idempotent submit, retried, then the wait) is in
`hivectl.cli.jobsubmit`, imported by that verb alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from hivectl.cli import joboutput
from hivectl.cli.api import Api, run_api
from hivectl.cli.common import (
    EXIT_USAGE,
    Listing,
    NoHeadersOption,
    OutputOption,
    check_id,
    fail,
    make,
    noun_app,
    output_format,
    print_ok,
)
from hivectl.cli.joboutput import IdArgument, get_job
from hivectl.cli.jobspec import (
    CommandArgument,
    ConstraintOption,
    CountOption,
    CpuOption,
    DiskOption,
    EngineOption,
    EnvOption,
    FileOption,
    GpuOption,
    ImageArgument,
    MemoryOption,
    MinReliabilityOption,
    NameOption,
    NetworkOption,
    OutputsOption,
    PriorityOption,
    QueueTimeoutOption,
    RetriesOption,
    SpecFlags,
    TargetOption,
    TimeoutOption,
    build_specs,
)
from hivectl.cli.jobview import (
    COLUMNS,
    EXEC_COLUMNS,
    QUEUE_COLUMNS,
    QUEUE_WIDE_COLUMNS,
    WIDE_COLUMNS,
    describe_lines,
    exec_row,
    job_row,
    queue_row,
)
from hivectl.cli.output import OutputFormat, print_data, write_lines
from hivectl.core.jobs import (
    ExecState,
    Execution,
    JobState,
    JobStopRequest,
)

app = noun_app(
    "Run jobs on the cluster's compute nodes and follow them: submit, list, describe, "
    "executions, logs, stop and results.\n\nIds may be shortened to any unique prefix."
)

SPEC_FLAG_NAMES = {"image", "engine", "name", "target", "cpu", "memory", "disk", "gpu"} | {
    "count",
    "timeout",
    "queue_timeout",
    "retries",
    "min_reliability",
    "priority",
    "network",
}
JobIdOption = Annotated[
    str | None,
    typer.Option(
        "--id",
        metavar="JOB_ID",
        help="The job's id ('j-' and 16 hex digits; default: a new one). A submit with the "
        "id of an existing job and the same spec gives that job, never a second one.",
        show_default=False,
    ),
]
MessageOption = Annotated[
    str,
    typer.Option(
        "--message", "-m", metavar="REASON", help="Why: kept with the job.", show_default=False
    ),
]


# -- submit --------------------------------------------------------------------------


@app.command("submit")
def submit(
    ctx: typer.Context,
    image: ImageArgument = None,
    command: CommandArgument = None,
    file: FileOption = None,
    engine: EngineOption = None,
    name: NameOption = None,
    cpu: CpuOption = None,
    memory: MemoryOption = None,
    disk: DiskOption = None,
    gpu: GpuOption = None,
    env: EnvOption = None,
    constraint: ConstraintOption = None,
    count: CountOption = None,
    target: TargetOption = None,
    timeout: TimeoutOption = None,
    queue_timeout: QueueTimeoutOption = None,
    retries: RetriesOption = None,
    min_reliability: MinReliabilityOption = None,
    priority: PriorityOption = None,
    network: NetworkOption = None,
    outputs: OutputsOption = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Wait for the job (all the jobs of a file of several), or print the id and "
            "return.",
        ),
    ] = True,
    id_only: Annotated[
        bool, typer.Option("--id-only", help="Print only the id (no wait).")
    ] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Stream the logs as it runs.")] = False,
    job_id: JobIdOption = None,
    ids_format: Annotated[
        OutputFormat | None,
        typer.Option(
            "-o",
            "--ids-format",
            case_sensitive=False,
            help="How to print the job ids: one a line (default), or json or yaml (a list).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Submit a job. By default wait for it, print its output, then its result line;
    exit 0 if it COMPLETED, 1 otherwise.

    Flags override the fields of a `-f` spec file (`env` and resources merge key by
    key). The spec is checked before anything is sent.

    A file may hold many jobs: a YAML stream (documents separated by `---`) or a list
    (JSON or YAML). All are checked, then submitted over one connection; their ids are
    printed one a line (`-o json`: a list), then hivectl waits for them all (not with
    `--no-wait`) and exits 1 unless every one COMPLETED, naming those that did not.

    Submitting is safe to retry: the job's id is chosen before it is sent, and a submit
    that gets no reply is sent again with the same id, which the requester answers with
    the job it already has. Give `--id` to make a later run of the same command (a
    script retrying) name the same job too.

    **Examples**

    ```
    hivectl job submit ubuntu -- echo hello
    hivectl job submit --engine process -- uname -a
    hivectl job submit --cpu 500m --memory 512MiB -e MODE=fast -l zone=eu-1 python:3 -- python -V
    hivectl job submit --target all --engine process -- df -h
    hivectl job submit --min-reliability 0.95 --engine process -- ./long-simulation
    hivectl job submit --priority 80 --cpu 4 python:3 -- python train.py
    hivectl job submit -f job.yaml --count 3 --id-only
    hivectl job submit -f jobs.yaml --no-wait -o json
    ```
    """
    flags = SpecFlags(**{k: v for k, v in locals().items() if k in SPEC_FLAG_NAMES})
    flags.command, flags.env = command or [], env or []
    flags.constraints, flags.outputs = constraint or [], outputs or []
    specs, many = build_specs(flags, file)
    if many:
        _check_many(len(specs), job_id, follow)
        from hivectl.cli.jobmany import submit_jobs  # the path of a file of many jobs

        submit_jobs(ctx, specs, wait=wait and not id_only, fmt=ids_format)
        return
    from hivectl.cli.jobsubmit import submit_job  # the submit path: for this verb alone

    submit_job(
        ctx, specs[0], job_id, id_only=id_only, no_wait=not wait, follow=follow, fmt=ids_format
    )


def _check_many(count: int, job_id: str | None, follow: bool) -> None:
    if job_id is not None:
        fail(f"--id names one job; the file holds {count}", EXIT_USAGE)
    if follow:
        fail(f"--follow streams one job's output; the file holds {count} jobs", EXIT_USAGE)


# -- list ----------------------------------------------------------------------------


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    output: OutputOption = None,
    no_headers: NoHeadersOption = False,
    filter_state: Annotated[
        JobState | None,
        typer.Option(
            "--filter-state",
            case_sensitive=False,
            metavar="STATE",
            help="Only jobs in this state: PENDING, QUEUED, RUNNING, COMPLETED, FAILED, "
            "STOPPED (any case).",
            show_default=False,
        ),
    ] = None,
    everyone: Annotated[
        bool,
        typer.Option("--all", "-A", help="Every user's jobs, not only yours (not for submitters)."),
    ] = False,
    queued: Annotated[
        bool,
        typer.Option(
            "--queued",
            help="Only the jobs waiting to be placed, in the order they will be, with "
            "their position and why they wait.",
        ),
    ] = False,
) -> None:
    """List your jobs (`--all`: everyone's), newest first; with `--queued`, the waiting
    ones in queue order.

    EXECUTIONS counts the job's executions by state, e.g. `1/1 COMPLETED`; OWNER is
    the user who submitted it (`admin` for the operator credential).

    The queue: higher priority first; within a priority, the owner whose recent
    usage (decayed over `[scheduler] fair_share_half_life`) is least; then first
    submitted. A job that does not fit never holds up the ones behind it (backfill).
    REASON says why each waits: its owner's quota, no node with room, or its turn.

    **Examples**

    ```
    hivectl job list
    hivectl job list --all --filter-state running -o wide
    hivectl job list --queued
    hivectl job list -o json | jq -r '.[].job_id'
    ```
    """
    fmt = output_format(ctx, output)
    if queued:
        if filter_state is not None:
            fail("--queued lists the waiting jobs; it takes no --filter-state", EXIT_USAGE)
        waiting = run_api(
            ctx,
            lambda api: api.client.list(queued=True, everyone=everyone),
            status="Listing queue",
        )
        listing = Listing("waiting jobs", QUEUE_COLUMNS, QUEUE_WIDE_COLUMNS, queue_row)
        listing.show(waiting, fmt, no_headers=no_headers)
        return
    jobs = run_api(
        ctx, lambda api: api.client.list(filter_state, everyone=everyone), status="Listing jobs"
    )
    jobs.sort(key=lambda job: (job.created_at, job.job_id), reverse=True)
    Listing("jobs", COLUMNS, WIDE_COLUMNS, job_row).show(jobs, fmt, no_headers=no_headers)


# -- describe, stop ------------------------------------------------------------------


@app.command("describe")
def describe(ctx: typer.Context, job_id: IdArgument, output: OutputOption = None) -> None:
    """Show one job: its spec, state and reason, and a table of its executions.

    **Examples**

    ```
    hivectl job describe j-3f2a
    hivectl job describe j-3f2a -o yaml
    ```
    """
    fmt = output_format(ctx, output)
    job = get_job(ctx, job_id)
    if fmt.is_data:
        print_data(job, fmt)
    else:
        write_lines(describe_lines(job, datetime.now(UTC)))


@app.command("executions")
def executions(
    ctx: typer.Context,
    job_id: IdArgument,
    output: OutputOption = None,
    no_headers: NoHeadersOption = False,
    state: Annotated[
        ExecState | None,
        typer.Option(
            "--state",
            case_sensitive=False,
            metavar="STATE",
            help="Only executions in this state: OFFERED, ACCEPTED, STARTING, RUNNING, "
            "COMPLETED, FAILED, CANCELLED, LOST, REJECTED (any case).",
            show_default=False,
        ),
    ] = None,
    node: Annotated[
        str,
        typer.Option("--node", metavar="NODE", help="Only executions on this node (id or prefix)."),
    ] = "",
) -> None:
    """List a job's executions, oldest first: all of them, however many (the
    requester sends them a page at a time), or those of one state or node.

    **Examples**

    ```
    hivectl job executions j-3f2a --state failed
    hivectl job executions j-3f2a -o json | jq -r '.[].exec_id'
    ```
    """
    fmt = output_format(ctx, output)
    checked = check_id(job_id, "job")

    async def work(api: Api) -> list[Execution]:
        return [e async for e in api.client.executions(checked, state, node or None)]

    found = run_api(ctx, work, status="Listing executions")
    Listing("executions", EXEC_COLUMNS, EXEC_COLUMNS, exec_row).show(
        found, fmt, no_headers=no_headers
    )


@app.command("stop")
def stop(
    ctx: typer.Context,
    job_id: IdArgument,
    message: MessageOption = "",
) -> None:
    """Stop a job: its executions are cancelled and it ends STOPPED.

    **Example**

    ```
    hivectl job stop j-3f2a -m "wrong input"
    ```
    """
    checked = check_id(job_id, "job")
    make(JobStopRequest, id=checked, reason=message)  # a reason it refuses: exit 2
    run_api(ctx, lambda api: api.client.stop(checked, message))
    print_ok()


# Reading a job's output has its own module; its verbs are this noun's.
app.command("logs")(joboutput.logs)
app.command("results")(joboutput.results)
