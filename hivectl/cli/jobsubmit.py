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
from hivectl.cli.output import write_out
from hivectl.core.bus import BusError, NoAnswer, RemoteError, connect_cli, connection_failure
from hivectl.core.jobs import (
    JOB_ID_PATTERN,
    Job,
    JobSpec,
    JobState,
    JobSubmitReply,
    JobSubmitRequest,
    new_job_id,
)

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails, RetryHook

_JOB_ID = re.compile(JOB_ID_PATTERN)
# A submit with no reply is sent again (the same job id: it never runs twice) up to this
# many times in all, each waiting the client's timeout, with 0.2s, 0.4s, 0.8s between
# them: under half a minute with the default timeout. So is one the requester could not
# store yet ("store unavailable": on a NATS cluster, a server down while another takes
# over its streams, which takes seconds). Refusals are not retried.
SUBMIT_ATTEMPTS = 4
RETRIED = (BusError, NatsError)
STORE_UNAVAILABLE = "store_unavailable"
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
) -> None:
    """What `job submit` does with a checked spec: send it as `job_id` (a new id when
    None), then wait for the job unless `id_only` or `no_wait`."""
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
    shown = shown_executions(job, show_all=False)
    if len(shown) > REPLAY_MAX or cut_short(job):
        info(f"{exec_counts(job)}; their output: hivectl job logs {job.job_id}")
    else:
        await watch.replay(api, js, job, shown)
    return job
