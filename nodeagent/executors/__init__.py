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
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from hivectl.core.jobs import ExecState, JobSpec, Measured

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
    kill_grace: float = KILL_GRACE  # between SIGTERM and SIGKILL; 0 when fenced
    results_file: Path = Path("results.tar.gz")  # where the outputs' archive goes
    max_output_bytes: int = 0  # the node's cap on a job's outputs; 0: none


@dataclass
class Outcome:
    """How the job ended. `exit_code` is None when it never ran."""

    exit_code: int | None
    error: str = ""
    cancelled: bool = False
    results: Path | None = None  # a tar.gz of the spec's outputs, when it asked for any
    notice: str = ""  # what a node limit cut (outputs), for the user
    measured: Measured | None = None  # what the executor measured of the run


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
    """A tar.gz written to `path` from files and from other (uncompressed) tar streams.

    The archive goes to disk as it is built, so outputs of any size cost no memory.
    Regular files count against `limit` (uncompressed bytes; 0: none): a file that
    would cross it is left out and counted, and `note()` says so for the user.
    """

    def __init__(self, path: Path, limit: int = 0) -> None:
        self.path = path
        self.limit = limit
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(path, mode="w:gz")  # noqa: SIM115
        self.members = 0
        self.size = 0  # bytes of file content archived
        self.left_out = 0  # files that did not fit under the limit
        self.left_out_bytes = 0

    def _admit(self, member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if member.isfile() and self.limit and self.size + member.size > self.limit:
            self.left_out += 1
            self.left_out_bytes += member.size
            return None
        self.size += member.size if member.isfile() else 0
        self.members += 1
        return member

    def add_path(self, path: str, arcname: str) -> None:
        self._tar.add(path, arcname=arcname, filter=lambda member: self._admit(member))

    def add_tar(self, stream: IO[bytes]) -> None:
        """Copy every member of an uncompressed tar stream (what `get_archive` returns)."""
        with tarfile.open(fileobj=stream, mode="r|") as source:
            for member in source:
                if self._admit(member) is None:
                    continue  # stream mode skips the member's data on the next read
                data = source.extractfile(member) if member.isfile() else None
                self._tar.addfile(member, data)

    def finish(self) -> Path:
        self._tar.close()
        return self.path

    def note(self) -> str:
        """What the limit cut, for the user; '' when nothing was left out."""
        if not self.left_out:
            return ""
        return (
            f"outputs cut at the node's max_output_bytes ({human_size(self.limit)}): "
            f"{self.left_out} file(s), {human_size(self.left_out_bytes)}, left out"
        )


class ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (docker's `get_archive` stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def human_size(n: float) -> str:
    """1.5 MiB, 100 MiB, 2 GiB: sizes in messages to the user."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
