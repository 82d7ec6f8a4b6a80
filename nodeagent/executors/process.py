"""Jobs as local processes: own session and work dir, a cleaned environment, rlimits.

Off unless the node's config turns it on (`executors.process.enabled`): a process job
runs with the agent's own user and sees the host's file system, so it is for machines
whose operator trusts every job submitter. What it does give:

- its own session (`start_new_session`), so the whole process group is killed on a
  timeout or cancel (SIGTERM, then SIGKILL after 2 s) and at its end (stragglers);
- a fresh work dir `<work_dir>/<exec_id>`, its cwd and HOME, removed once outputs
  are collected; a spec workdir is taken relative to it and may not escape it;
- an environment with nothing of the agent's: PATH, HOME, LANG, and the spec's env;
- rlimits: RLIMIT_AS from the memory request, RLIMIT_NOFILE 1024, no core dumps;
- its CPU time and peak memory, from the kernel's account when it is reaped (child.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psutil

from hivectl.core.jobs import ExecState, JobSpec
from nodeagent.executors import ExecutorError, JobRun, Outcome, TarBuilder, watch
from nodeagent.executors.child import Child, spawn

log = logging.getLogger("hive.nodeagent")

CHUNK = 64 * 1024
NOFILE = 1024
PATH = "/usr/local/bin:/usr/bin:/bin"
READ_DRAIN = 2.0  # how long to drain output after the group is gone (a setsid'ed child)
ORPHAN_WINDOW = 60.0  # seconds from admission within which a job's process has started


class ProcessExecutor:
    engine = "process"

    def __init__(self, work_dir: Path, node_id: str = "") -> None:
        self.work_dir = work_dir
        self.node_id = node_id

    def refusal(self, spec: JobSpec) -> str | None:
        # What a process job may ask for (no GPUs, paths inside its work dir) is the
        # same on every node: JobSpec checks it, at submit and when an offer is read.
        return None

    async def clean_up_after_crash(self, exec_id: str, handle: str, admitted: str) -> None:
        """What a job left when the agent died under it: its process group, which its
        own session kept alive (a job that writes no output never notices), and its
        work dir."""
        killed = await asyncio.to_thread(_kill_orphan, handle, admitted)
        if killed:
            log.info("killed the processes execution %s left running", exec_id)
        await asyncio.to_thread(shutil.rmtree, self.work_dir / exec_id, True)

    async def kill_orphans(self, held: set[str]) -> list[str]:
        """Kill the process jobs of this node that no ledger entry holds (the agent died
        and its ledger was lost or damaged), and remove their work dirs; their ids."""
        found = await asyncio.to_thread(_orphans, self.work_dir, held)
        for exec_id, pgid in found.items():
            log.warning("killing execution %s: it runs here but no record holds it", exec_id)
            _killpg(pgid, signal.SIGKILL)
        await asyncio.to_thread(_remove_dirs, self.work_dir, held)
        return sorted(found)

    async def run(self, job: JobRun) -> Outcome:
        await job.state(ExecState.STARTING)
        root = self.work_dir / job.exec_id
        try:
            cwd = await asyncio.to_thread(_make_dirs, root, job.spec.workdir)
            if job.cancel.is_set():
                return Outcome(exit_code=None, cancelled=True)
            proc = await self._spawn(job, root, cwd)
            job.set_handle(str(proc.pid))
            await job.state(ExecState.RUNNING)
            outcome = await self._supervise(job, proc)
            if job.spec.outputs:
                tar = TarBuilder(job.results_file, job.max_output_bytes)
                await asyncio.to_thread(_archive, tar, root, job.spec.outputs)
                outcome.results, outcome.notice = tar.path, tar.note()
            return outcome
        finally:
            await asyncio.to_thread(shutil.rmtree, root, True)

    async def _spawn(self, job: JobRun, root: Path, cwd: Path) -> Child:
        env = {"PATH": PATH, "HOME": str(root), "LANG": "C.UTF-8", **job.spec.env}
        # Ours last, so a spec cannot set them; with HOME they also let a restarted
        # agent that lost its ledger find the job's processes (see kill_orphans).
        env |= {"HIVE_NODE_ID": self.node_id, "HIVE_JOB_ID": job.job_id}
        env["HIVE_EXEC_ID"] = job.exec_id
        argv, preexec = _argv(job.spec.command, job.spec.resources.memory)
        why = _unrunnable(job.spec.command[0], cwd, env["PATH"]) if preexec is None else None
        if why is not None:
            raise ExecutorError(f"cannot start {job.spec.command[0]!r}: {why}")
        try:
            return await spawn(argv, cwd=cwd, env=env, preexec=preexec)
        except OSError as exc:  # not found, not executable, rlimit refused
            raise ExecutorError(f"cannot start {job.spec.command[0]!r}: {exc.strerror}") from None

    async def _supervise(self, job: JobRun, proc: Child) -> Outcome:
        readers = [
            asyncio.create_task(_pump(proc.stdout, "stdout", job)),
            asyncio.create_task(_pump(proc.stderr, "stderr", job)),
        ]
        done: asyncio.Future[int] = asyncio.ensure_future(proc.wait())
        try:
            outcome = await watch(done, job, lambda: _terminate(proc, job.kill_grace))
        finally:
            _killpg(proc.pid, signal.SIGKILL)  # whatever the job left behind
            _, pending = await asyncio.wait(readers, timeout=READ_DRAIN)
            for task in pending:
                task.cancel()
            proc.close()
        outcome.measured = proc.measured()
        if outcome.exit_code is not None and outcome.exit_code < 0:
            outcome.exit_code = 128 - outcome.exit_code  # killed by a signal, as a shell says
        return outcome


def _make_dirs(root: Path, workdir: str) -> Path:
    root.mkdir(parents=True, exist_ok=False, mode=0o700)
    cwd = root / workdir if workdir else root
    cwd.mkdir(parents=True, exist_ok=True)
    return cwd


_PRLIMIT = shutil.which("prlimit", path=PATH)


def _argv(command: list[str], memory: int) -> tuple[list[str], Callable[[], None] | None]:
    """The command line to spawn, and what to run between fork and exec (if anything).

    Through prlimit(1) (util-linux, on every Debian), which sets the limits and execs
    the job: with no Python to run in the child, CPython spawns it by vfork, 0.3 ms of
    the agent's event loop against 3.5 ms for a fork that must run `_limits` (measured
    on this 2-core machine), which capped an agent at under 300 executions a second.
    """
    if _PRLIMIT is None:
        return list(command), _limits(memory)
    limits = [f"--nofile={NOFILE}:{NOFILE}", "--core=0:0"]
    if memory > 0:
        limits.append(f"--as={memory}:{memory}")
    return [_PRLIMIT, *limits, "--", *command], None


def _unrunnable(program: str, cwd: Path, path: str) -> str | None:
    """Why exec would refuse `program` (as its error says), or None: prlimit execs the
    job itself, so what it cannot start must be found out before."""
    if "/" not in program:
        return None if shutil.which(program, path=path) else "No such file or directory"
    target = cwd / program
    if not target.exists():
        return "No such file or directory"
    if target.is_dir() or not os.access(target, os.X_OK):
        return "Permission denied"
    return None


def _limits(memory: int) -> Callable[[], None]:
    """rlimits applied in the child between fork and exec.

    No RLIMIT_CPU: it counts CPU seconds per process, not a share of a core, so it
    would kill a long job that uses little CPU and not limit one that forks; a share
    needs cgroups. RLIMIT_AS limits address space, not resident memory: runtimes that
    reserve much more than they use (Go, the JVM) need a generous memory request.
    """

    def apply() -> None:
        if memory > 0:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


async def _pump(stream: asyncio.StreamReader, name: str, job: JobRun) -> None:
    while chunk := await stream.read(CHUNK):
        await job.log(name, chunk)


async def _terminate(proc: Child, grace: float) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` if the leader lives on."""
    if grace > 0:
        _killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    _killpg(proc.pid, signal.SIGKILL)


def _kill_orphan(handle: str, admitted: str) -> bool:
    """SIGKILL the process group a dead agent's job leads, if `handle` still names it.

    The pid may have been reused since (a reboot, a long downtime): only a session
    leader created within ORPHAN_WINDOW of the job's admission is taken to be the job.
    """
    try:
        pid = int(handle)
        created = psutil.Process(pid).create_time()
        since = datetime.fromisoformat(admitted).timestamp()
        leads_its_group = os.getpgid(pid) == pid
    except (ValueError, OSError, psutil.Error):
        return False  # gone already, or not a pid
    # `admitted` is cut to the second: the job's process starts at most a second before.
    if not leads_its_group or not since - 1 <= created <= since + ORPHAN_WINDOW:
        return False
    _killpg(pid, signal.SIGKILL)
    return True


def _orphans(work_dir: Path, held: set[str]) -> dict[str, int]:
    """{exec id: process group} of running jobs under `work_dir` that `held` lacks.

    A job is known by its environment: HIVE_EXEC_ID, and the HOME this agent gave it
    (its work dir). The work dir, not the node id, tells this agent's jobs apart from
    another agent's on the same machine, which may use the same node name.
    """
    found: dict[str, int] = {}
    for proc in psutil.process_iter(["environ"]):
        env = proc.info.get("environ") or {}
        exec_id = env.get("HIVE_EXEC_ID")
        if not exec_id or exec_id in held or env.get("HOME") != str(work_dir / exec_id):
            continue
        with contextlib.suppress(OSError, psutil.Error):
            found.setdefault(exec_id, os.getpgid(proc.pid))
    return found


def _remove_dirs(work_dir: Path, held: set[str]) -> None:
    """Work dirs of executions nobody holds (`.results` and other dot dirs stay)."""
    if not work_dir.is_dir():
        return
    for entry in work_dir.iterdir():
        if entry.is_dir() and entry.name.startswith("e-") and entry.name not in held:
            shutil.rmtree(entry, ignore_errors=True)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _archive(tar: TarBuilder, root: Path, outputs: list[str]) -> None:
    for path in outputs:
        source = root / path
        # A job may plant symlinks: archive only what really lies inside its work dir.
        if source.exists() and source.resolve().is_relative_to(root.resolve()):
            tar.add_path(str(source), arcname=os.path.normpath(path))
        else:
            log.info("output %s of the job does not exist; not archived", path)
    tar.finish()
