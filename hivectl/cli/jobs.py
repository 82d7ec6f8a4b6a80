"""`hivectl job …`: submit jobs, list and inspect them, read their logs and results."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from nats.errors import Error as NatsError

from hivectl.cli import paging
from hivectl.cli.common import (
    EXIT_ERROR,
    Api,
    CliError,
    Listing,
    NoHeadersOption,
    OutputOption,
    call,
    check_id,
    fail,
    info,
    make,
    noun_app,
    output_format,
    print_ok,
    run_api,
    status_line,
)
from hivectl.cli.jobdata import JobWatch, check_log_stream, download_results
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
    NameOption,
    NetworkOption,
    OutputsOption,
    QueueTimeoutOption,
    RetriesOption,
    SpecFlags,
    TargetOption,
    TimeoutOption,
    build_spec,
)
from hivectl.cli.jobview import (
    COLUMNS,
    WIDE_COLUMNS,
    describe_lines,
    job_row,
    result_line,
    shown_executions,
    status_text,
)
from hivectl.cli.output import counted, print_data, write_lines, write_out
from hivectl.core.bus import BusError, NoAnswer, RemoteError, connect_cli, connection_failure
from hivectl.core.jobs import (
    JOB_ID_PATTERN,
    JOB_TERMINAL,
    ExecState,
    Execution,
    Job,
    JobGetReply,
    JobGetRequest,
    JobListReply,
    JobListRequest,
    JobState,
    JobStopRequest,
    JobSubmitReply,
    JobSubmitRequest,
    new_job_id,
)
from hivectl.core.models import OkReply

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails, RetryHook

app = noun_app(
    "Run jobs on the cluster's compute nodes and follow them: submit, list, describe, "
    "logs, stop and results.\n\nIds may be shortened to any unique prefix."
)

IdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="Job id, or a unique prefix of one.", show_default=False)
]
SPEC_FLAG_NAMES = {"image", "engine", "name", "target", "cpu", "memory", "disk", "gpu"} | {
    "count",
    "timeout",
    "queue_timeout",
    "retries",
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
_JOB_ID = re.compile(JOB_ID_PATTERN)
# A submit with no reply is sent again (the same job id: it never runs twice) up to this
# many times in all, each waiting the client's timeout, with 0.2s, 0.4s, 0.8s between
# them: under half a minute with the default timeout. So is one the requester could not
# store yet ("store unavailable": on a NATS cluster, a server down while another takes
# over its streams, which takes seconds). Refusals are not retried.
SUBMIT_ATTEMPTS = 4
RETRIED = (BusError, NatsError)
STORE_UNAVAILABLE = "store_unavailable"
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
    network: NetworkOption = None,
    outputs: OutputsOption = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Print the job id and return.")
    ] = False,
    id_only: Annotated[
        bool, typer.Option("--id-only", help="Print only the id (no wait).")
    ] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Stream the logs as it runs.")] = False,
    job_id: JobIdOption = None,
) -> None:
    """Submit a job. By default wait for it, print its output, then its result line;
    exit 0 if it COMPLETED, 1 otherwise.

    Flags override the fields of a `-f` spec file (`env` and resources merge key by
    key). The spec is checked before anything is sent.

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
    hivectl job submit -f job.yaml --count 3 --id-only
    ```
    """
    flags = SpecFlags(**{k: v for k, v in locals().items() if k in SPEC_FLAG_NAMES})
    flags.command, flags.env = command or [], env or []
    flags.constraints, flags.outputs = constraint or [], outputs or []
    spec = build_spec(flags, file)
    request = make(JobSubmitRequest, spec=spec, job_id=_chosen_id(job_id))
    if id_only or no_wait:
        submitted = run_api(ctx, lambda api: send_submit(api, request))
        write_out(submitted)
        if not id_only:
            info(f"Follow it with: hivectl job logs --follow {submitted}")
        return
    _submit_and_wait(ctx, request, follow)


def _chosen_id(given: str | None) -> str:
    if given is None:
        return new_job_id()
    if not _JOB_ID.match(given):
        fail(f"invalid job id {given!r}: use 'j-' and 16 hex digits, like {new_job_id()}")
    return given


async def send_submit(api: Api, request: JobSubmitRequest) -> str:
    """Submit, sending the same request again (same job id) while no reply comes or the
    requester could not store it yet: the requester creates a job id once, so a lost
    reply never makes a second job. The id is the requester's answer (an older one
    picks its own)."""
    import stamina  # only a submit needs it

    unanswered: list[BaseException] = []  # tries that may have reached the store
    stamina.instrumentation.set_on_retry_hooks([_retrying(request.job_id, unanswered)])
    try:
        async for attempt in stamina.retry_context(
            on=_again, attempts=SUBMIT_ATTEMPTS, timeout=SUBMIT_ATTEMPTS * api.cfg.timeout + 5,
            wait_initial=0.2, wait_max=2.0, wait_jitter=0.2,
        ):  # fmt: skip
            with attempt:
                if api.nc.is_closed:  # the connection broke under the last try
                    api.nc = await connect_cli(api.cfg.nats)
                return (await api.call("job", "submit", request, JobSubmitReply)).job_id
    except (*RETRIED, RemoteError) as exc:
        if not _again(exc):
            raise
        text, job_id = str(exc) or type(exc).__name__, request.job_id
        if not _maybe_stored(exc) and not unanswered:
            raise CliError(text) from None  # it never reached a requester
        raise CliError(
            f"{text}. Job {job_id} may have been submitted: see `hivectl job describe {job_id}`; "
            f"submitting again with `--id {job_id}` never makes a second job"
        ) from None
    raise AssertionError("retry_context ended without a result")


def _again(exc: Exception) -> bool:
    """Worth sending the same submit again: no reply, or a store that could not answer."""
    return isinstance(exc, RETRIED) or (
        isinstance(exc, RemoteError) and exc.code == STORE_UNAVAILABLE
    )


def _maybe_stored(exc: BaseException) -> bool:
    """The requester may have stored the job before this went wrong."""
    return isinstance(exc, NoAnswer | RemoteError)


def _retrying(job_id: str | None, unanswered: list[BaseException]) -> RetryHook:
    def note(details: RetryDetails) -> None:
        cause = details.caused_by
        if _maybe_stored(cause):
            unanswered.append(cause)
        if isinstance(cause, RemoteError):
            info(f"The submit was not stored yet ({cause}); sending it again as {job_id}")
        else:
            info(f"No reply to the submit ({cause}); sending it again as {job_id}")

    return note


def _submit_and_wait(ctx: typer.Context, request: JobSubmitRequest, follow: bool) -> None:
    watch = JobWatch()
    try:
        job = run_api(ctx, lambda api: _run_job(api, request, watch, follow))
    except KeyboardInterrupt:
        if watch.job_id:
            info(f"Stopped waiting; {watch.job_id} goes on (hivectl job stop {watch.job_id}).")
        raise typer.Exit(130) from None
    info(result_line(job))
    if job.state is not JobState.COMPLETED:
        raise typer.Exit(EXIT_ERROR)


async def _run_job(api: Api, request: JobSubmitRequest, watch: JobWatch, follow: bool) -> Job:
    await check_log_stream(api)  # before anything is sent
    watch.job_id = await send_submit(api, request)
    try:
        return await _wait_job(api, watch, follow)
    except RETRIED as exc:
        why = connection_failure(api.cfg.nats.url, exc, closed=api.nc.is_closed)
        job_id = watch.job_id
        raise CliError(
            f"{why}; {job_id} may still run: see `hivectl job describe {job_id}`"
        ) from None


async def _wait_job(api: Api, watch: JobWatch, follow: bool) -> Job:
    js = api.nc.jetstream()  # of the connection now: the submit may have made a new one
    if follow:
        return await watch.follow(api, js, show_all=False)
    with status_line(f"{watch.job_id}: PENDING") as show:
        job = await watch.wait(api, lambda job: show(status_text(job)))
    await watch.replay(api, js, job, shown_executions(job, show_all=False))
    return job


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
) -> None:
    """List jobs, newest first.

    EXECUTIONS counts the job's executions by state, e.g. `1/1 COMPLETED`.

    **Examples**

    ```
    hivectl job list
    hivectl job list --filter-state running -o wide
    hivectl job list -o json | jq -r '.[].job_id'
    ```
    """
    fmt = output_format(ctx, output)
    query = make(JobListRequest, state=filter_state)
    jobs = run_api(ctx, lambda api: fetch_all(api, query), status="Listing jobs")
    jobs.sort(key=lambda job: (job.created_at, job.job_id), reverse=True)
    Listing("jobs", COLUMNS, WIDE_COLUMNS, job_row).show(jobs, fmt, no_headers=no_headers)


async def fetch_all(api: Api, query: JobListRequest) -> list[Job]:
    """Every job the query matches, from every page."""
    pages = await paging.follow(api, "job", query, JobListReply)
    return [job for page in pages for job in page.jobs]


# -- describe, stop ------------------------------------------------------------------


def get_job(ctx: typer.Context, job_id: str) -> Job:
    query = make(JobGetRequest, id=check_id(job_id, "job"))
    return call(ctx, "job", "get", query, JobGetReply).job


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
    query = make(JobStopRequest, id=check_id(job_id, "job"), reason=message)
    call(ctx, "job", "stop", query, OkReply)
    print_ok()


# -- logs, results -------------------------------------------------------------------


@app.command("logs")
def logs(
    ctx: typer.Context,
    job_id: IdArgument,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep tailing until each execution ends.")
    ] = False,
    exec_id: Annotated[
        str | None,
        typer.Option(
            "--exec",
            metavar="EXEC_ID",
            help="Only this execution (or a unique prefix).",
            show_default=False,
        ),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also executions that a retry replaced.")
    ] = False,
) -> None:
    """Print a job's output: stdout to stdout, stderr to stderr.

    By default the executions of the latest attempt; `--all` adds those a retry
    replaced. Without `--follow` it prints what is stored now and returns.

    **Examples**

    ```
    hivectl job logs j-3f2a
    hivectl job logs --follow j-3f2a
    hivectl job logs j-3f2a --exec e-91 2>/dev/null
    ```
    """
    job = get_job(ctx, job_id)
    executions = _pick(job, exec_id, show_all)

    async def work(api: Api) -> None:
        js = await check_log_stream(api)
        if follow and job.state not in JOB_TERMINAL and exec_id is None:
            await JobWatch(job.job_id).follow(api, js, show_all=show_all)
        else:
            await JobWatch(job.job_id).replay(api, js, job, executions, live=follow)

    run_api(ctx, work)


def _pick(job: Job, exec_id: str | None, show_all: bool) -> list[Execution]:
    if exec_id is None:
        return shown_executions(job, show_all)
    found = [e for e in job.executions if e.exec_id.startswith(exec_id)]
    if len(found) != 1:
        what = "no execution" if not found else f"{len(found)} executions"
        verb = "matches" if len(found) < 2 else "match"
        fail(f"{what} of {job.job_id} {verb} {exec_id!r}")
    return found


@app.command("results")
def results(
    ctx: typer.Context,
    job_id: IdArgument,
    dest: Annotated[
        Path,
        typer.Option("--dir", "-d", metavar="DIR", help="Where to put them: DIR/<exec_id>/."),
    ] = Path("."),
) -> None:
    """Download a job's results (the paths it named with `--output`) into DIR/<exec_id>/.

    Archives are unpacked with tarfile's `data` filter: nothing is written outside
    DIR, and members that would be (`../x`, links pointing out) are skipped.

    **Example**

    ```
    hivectl job results j-3f2a -d ./out
    ```
    """
    job = get_job(ctx, job_id)
    executions = [e for e in job.executions if e.state is not ExecState.REJECTED]

    async def work(api: Api) -> tuple[list[Path], list[str]]:
        if not executions:
            raise CliError(f"no results: {job.job_id} has no executions")
        return await download_results(api, job, executions, dest)

    written, refused = run_api(ctx, work, status="Downloading results")
    for problem in refused:
        info(f"Skipped {problem}")
    write_lines(str(path) for path in written)
    info(f"Wrote {counted(len(written), 'file')} under {dest}")
