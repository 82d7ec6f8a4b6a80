"""`hivectl job submit`'s path: the job's id chosen before it is sent, a submit sent
again (the same id) while no reply comes, and the wait for the job's end and output.

Only the `submit` command in `hivectl.cli.jobs` imports it: the other verbs of the noun
need none of it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import typer
from nats.errors import Error as NatsError

from hivectl.cli.api import Api, CliError, run_api
from hivectl.cli.common import EXIT_ERROR, fail, info, make, status_line
from hivectl.cli.jobdata import JobWatch, check_log_stream
from hivectl.cli.jobview import cut_short, exec_counts, result_line, shown_executions, status_text
from hivectl.cli.output import OutputFormat, print_data, write_out
from hivectl.core.bus import BusError, RemoteError, connection_failure
from hivectl.core.errors import SubmitUncertain
from hivectl.core.jobs import (
    JOB_ID_PATTERN,
    Job,
    JobSpec,
    JobState,
    JobSubmitRequest,
    new_job_id,
)

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails, RetryHook

_JOB_ID = re.compile(JOB_ID_PATTERN)
RETRIED = (BusError, NatsError)
# A waiting submit prints the output of this many executions at most; a bigger batch
# gets its counts and the command that prints them all.
REPLAY_MAX = 10


def submit_job(
    ctx: typer.Context,
    spec: JobSpec,
    job_id: str | None,
    *,
    id_only: bool,
    no_wait: bool,
    follow: bool,
    fmt: OutputFormat | None = None,
) -> None:
    """What `job submit` does with a checked spec: send it as `job_id` (a new id when
    None), then wait for the job unless `id_only` or `no_wait`. `fmt` json or yaml
    prints the id as a list of one, as for a file of many jobs."""
    request = make(JobSubmitRequest, spec=spec, job_id=_chosen_id(job_id))
    if id_only or no_wait:
        submitted = run_api(ctx, lambda api: send_submit(api, request))
        if fmt is not None and fmt.is_data:
            print_data([submitted], fmt)
        else:
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
    """Submit through the client, which sends the same request again (same job id)
    while no reply comes or the requester could not store it yet: the requester creates
    a job id once, so a lost reply never makes a second job."""
    import stamina  # only a submit needs it

    stamina.instrumentation.set_on_retry_hooks([_retrying(request.job_id)])
    try:
        return await api.client.send_submit(request)
    except SubmitUncertain as exc:
        text, job_id = str(exc.cause) or type(exc.cause).__name__, exc.job_id
        raise CliError(
            f"{text}. Job {job_id} may have been submitted: see `hivectl job describe {job_id}`; "
            f"submitting again with `--id {job_id}` never makes a second job"
        ) from None
    except BusError as exc:  # tried again, and it never reached a requester
        raise CliError(str(exc) or type(exc).__name__) from None


def _retrying(job_id: str | None) -> RetryHook:
    def note(details: RetryDetails) -> None:
        cause = details.caused_by
        again = f"sending it again as {job_id}" if job_id else "sending it again"
        if isinstance(cause, RemoteError):
            info(f"The submit was not stored yet ({cause}); {again}")
        else:
            info(f"No reply to the submit ({cause}); {again}")

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
    # Of the connection now (the submit may have made a new one); none for a user.
    js = None if api.client.signed else api.nc.jetstream()
    if follow:
        return await watch.follow(api, js, show_all=False)
    with status_line(f"{watch.job_id}: PENDING") as show:
        job = await watch.wait(api, lambda job: show(status_text(job)))
    shown = shown_executions(job, show_all=False)
    if len(shown) > REPLAY_MAX or cut_short(job):
        info(f"{exec_counts(job)}; their output: hivectl job logs {job.job_id}")
    else:
        await watch.replay(api, js, job, shown)
    return job
