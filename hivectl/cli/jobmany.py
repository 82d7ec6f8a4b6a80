"""`hivectl job submit -f FILE` of a file that holds many jobs (a YAML stream, a list).

Every spec is checked first; then all go over one connection, many at a time, each
with an id chosen before it is sent (the client's `submit_many`), so hundreds take a
second rather than a start of hivectl each. The ids are printed as they are known, one
per line (`-o json|yaml`: a list); by default hivectl then waits for them all, with one
subscription to the jobs' events, and exits 1 unless every one COMPLETED.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import aclosing
from typing import TYPE_CHECKING

import typer

from hivectl.cli.api import Api, CliError, run_api
from hivectl.cli.common import EXIT_ERROR, info, status_line
from hivectl.cli.jobview import result_line
from hivectl.cli.output import OutputFormat, counted, print_data, write_out
from hivectl.core.errors import SubmitError
from hivectl.core.jobs import JOB_TERMINAL, Job, JobSpec, JobState
from hivectl.core.jobwait import JobTracker

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails, RetryHook


def submit_jobs(
    ctx: typer.Context, specs: list[JobSpec], *, wait: bool, fmt: OutputFormat | None
) -> None:
    """Submit `specs` and print their ids; with `wait`, wait for all of them."""
    try:
        jobs = run_api(ctx, lambda api: _submit_and_wait(api, specs, wait, fmt))
    except KeyboardInterrupt:
        info("Stopped waiting; the jobs go on (hivectl job list).")
        raise typer.Exit(130) from None
    if jobs is None:
        return
    failed = [job for job in jobs.values() if job.state is not JobState.COMPLETED]
    for job in failed:
        info(result_line(job))
    info(f"{counted(len(jobs), 'job')}: {_tally(jobs.values())}")
    if failed:
        raise typer.Exit(EXIT_ERROR)


async def _submit_and_wait(
    api: Api, specs: list[JobSpec], wait: bool, fmt: OutputFormat | None
) -> dict[str, Job] | None:
    import stamina  # only a submit needs it

    stamina.instrumentation.set_on_retry_hooks([_retrying()])
    try:
        with status_line(f"Submitting {counted(len(specs), 'job')}"):
            ids = await api.client.submit_many(specs)
    except SubmitError as failed:
        print_ids(failed.submitted, fmt)
        raise CliError(f"{failed}. The ids printed were submitted; the others were not") from None
    print_ids(ids, fmt)
    if not wait:
        return None
    tracker = JobTracker(api.client, ids)
    finished = 0
    with status_line(f"Waiting for {counted(len(ids), 'job')}") as show:
        async with aclosing(tracker.changes()) as changes:
            async for _job_id, state in changes:
                finished += state in JOB_TERMINAL
                show(f"Waiting for {counted(len(ids), 'job')}: {finished} finished")
    return tracker.done()


def print_ids(ids: list[str], fmt: OutputFormat | None) -> None:
    """Job ids on stdout: one a line, or a list in JSON or YAML."""
    if fmt is not None and fmt.is_data:
        print_data(ids, fmt)
    elif ids:
        write_out("\n".join(ids))


def _tally(jobs: Iterable[Job]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))


def _retrying() -> RetryHook:
    def note(details: RetryDetails) -> None:
        info(f"No reply to a submit ({details.caused_by}); sending it again with the same id")

    return note
