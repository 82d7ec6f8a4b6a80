"""What an executor is given and what it gives back; shared by the Docker and process ones.

The executions manager owns the execution's life (updates, logs, results, capacity);
an executor only sets up, runs and cleans up one job. It reports through the `JobRun`
it is handed: `state()` for STARTING and RUNNING, `log()` for output, `set_handle()`
for the container id or pid (kept in the ledger for restarts). It watches
`JobRun.cancel` and the spec's timeout itself, because only it knows how to kill its
kind of job, and returns an `Outcome`. A set-up failure raises `ExecutorError` with a
reason for the operator.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from hivectl.core.jobs import ExecState, JobSpec

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL


class ExecutorError(RuntimeError):
    """Setting up or running the job failed for a reason other than its exit code."""


@dataclass
class JobRun:
    """One execution as an executor sees it."""

    exec_id: str
    job_id: str
    spec: JobSpec
    state: Callable[[ExecState], Awaitable[None]]
    log: Callable[[str, bytes], Coroutine[Any, Any, None]]  # ("stdout" | "stderr", chunk)
    set_handle: Callable[[str], None]
    cancel: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Outcome:
    """How the job ended. `exit_code` is None when it never ran."""

    exit_code: int | None
    error: str = ""
    cancelled: bool = False
    results: bytes | None = None  # a tar.gz of the spec's outputs, when it asked for any


class Executor(Protocol):
    engine: str

    def refusal(self, spec: JobSpec) -> str | None:
        """Why this executor will not run `spec` here (checked before capacity is locked).

        Only what this node's settings decide belongs here, and such a refusal is
        transient for the job (another node may run it). A rule every node applies
        belongs in JobSpec, which refuses the spec at submit."""

    async def run(self, job: JobRun) -> Outcome:
        """Set up, run, watch (timeout, cancel), collect outputs and clean up."""


async def watch(
    done: asyncio.Future[int],
    job: JobRun,
    kill: Callable[[], Awaitable[None]],
    *,
    ran_for: float = 0.0,
) -> Outcome:
    """Wait for the exit code in `done`; kill on the spec's timeout or on cancel.

    `ran_for`: seconds the job already ran (a container an earlier run of the agent
    started): its timeout counts from its start, not from when the agent came back.
    """
    cancelled: asyncio.Future[Any] = asyncio.ensure_future(job.cancel.wait())
    waiters: set[asyncio.Future[Any]] = {done, cancelled}
    timeout = max(0.0, job.spec.timeout - ran_for) if job.spec.timeout else None
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
    if done.done():
        return Outcome(exit_code=done.result())
    await kill()
    code = await done
    if job.cancel.is_set():
        return Outcome(exit_code=code, cancelled=True)
    return Outcome(exit_code=code, error=f"killed after its {job.spec.timeout:g}s timeout")


def failure_text(outcome: Outcome) -> str:
    """The error for a FAILED update: the outcome's own, else the exit code."""
    return outcome.error or f"exit code {outcome.exit_code}"


class TarBuilder:
    """A tar.gz built in memory from files and from other (uncompressed) tar streams."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buffer, mode="w:gz")  # noqa: SIM115
        self.members = 0

    def add_path(self, path: str, arcname: str) -> None:
        self._tar.add(path, arcname=arcname)
        self.members += 1

    def add_tar(self, stream: io.BufferedIOBase | io.BytesIO) -> None:
        """Copy every member of an uncompressed tar stream (what `get_archive` returns)."""
        with tarfile.open(fileobj=stream, mode="r|") as source:
            for member in source:
                data = source.extractfile(member) if member.isfile() else None
                self._tar.addfile(member, data)
                self.members += 1

    def finish(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()
