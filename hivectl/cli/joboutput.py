"""`hivectl job logs` and `job results`, and fetching one job whole: what reads a job's
output. `hivectl.cli.jobs` mounts these verbs on the `job` noun."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hivectl.cli.api import Api, CliError, run_api
from hivectl.cli.common import check_id, fail, info
from hivectl.cli.jobdata import JobWatch, check_log_stream, download_results
from hivectl.cli.jobview import cut_short, shown_executions
from hivectl.cli.output import counted, write_lines
from hivectl.core.jobs import JOB_TERMINAL, ExecState, Execution, Job

IdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="Job id, or a unique prefix of one.", show_default=False)
]


def get_job(ctx: typer.Context, job_id: str, *, whole: bool = False) -> Job:
    """The job; with `whole`, with every execution, paged in when the reply left some
    out (a big job's `get` carries only the first few)."""
    checked = check_id(job_id, "job")

    async def work(api: Api) -> Job:
        job = await api.client.get(checked)
        if not whole or not cut_short(job):
            return job
        executions = [e async for e in api.client.executions(job.job_id)]
        return job.model_copy(update={"executions": executions})

    return run_api(ctx, work)


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
    job = get_job(ctx, job_id, whole=True)
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
    job = get_job(ctx, job_id, whole=True)
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
