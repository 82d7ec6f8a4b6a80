"""A process job's process, spawned and reaped here so that its resource use is known.

asyncio's subprocesses are reaped by its child watcher with `waitpid`, which drops the
kernel's account of what the process used. Reaping with `os.wait4` instead (in a
thread of the child's own, as asyncio's threaded watcher does) returns that account:
user and system CPU time of the job and of every descendant it waited for, and its
largest resident set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from hivectl.core.jobs import Measured

READ_LIMIT = 2**16  # a StreamReader's buffer, as asyncio's subprocess streams have


class Child:
    """A spawned job: its pid, its output streams and its end (exit code, usage)."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        transports: Sequence[asyncio.BaseTransport],
    ) -> None:
        self.pid = popen.pid
        self.stdout = stdout
        self.stderr = stderr
        self._popen = popen
        self._transports = transports
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[tuple[int, resource.struct_rusage]] = loop.create_future()
        threading.Thread(
            target=self._reap, args=(loop,), name=f"hive-reap-{self.pid}", daemon=True
        ).start()

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        _, status, usage = os.wait4(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)

        def settle() -> None:
            self._popen.returncode = code  # reaped: Popen must not wait for it again
            if not self._exited.done():
                self._exited.set_result((code, usage))

        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(settle)

    async def wait(self) -> int:
        """The exit code once it has exited (negative: killed by that signal)."""
        code, _ = await asyncio.shield(self._exited)
        return code

    def measured(self) -> Measured | None:
        """What it used, once it has exited (None before)."""
        if not self._exited.done():
            return None
        _, usage = self._exited.result()
        cpu = max(0.0, usage.ru_utime + usage.ru_stime)
        return Measured(cpu_seconds=round(cpu, 6), peak_memory=max(0, usage.ru_maxrss) * 1024)

    def close(self) -> None:
        """Close the output pipes (a reader given up on may have left them open)."""
        for transport in self._transports:
            transport.close()


async def spawn(
    argv: list[str], *, cwd: Path, env: dict[str, str], preexec: Callable[[], None] | None
) -> Child:
    """Start `argv` in its own session, output on pipes, stdin from /dev/null."""
    loop = asyncio.get_running_loop()
    # On the loop, as asyncio's own subprocesses are spawned: through prlimit (no
    # preexec) CPython spawns by vfork, a fraction of a millisecond (see process.py).
    popen = subprocess.Popen(  # noqa: ASYNC220
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=preexec,
    )
    readers, transports = [], []
    for pipe in (popen.stdout, popen.stderr):
        reader = asyncio.StreamReader(limit=READ_LIMIT, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda r=reader: asyncio.StreamReaderProtocol(r, loop=loop),  # type: ignore[misc]
            pipe,
        )
        readers.append(reader)
        transports.append(transport)
    return Child(popen, readers[0], readers[1], transports)
