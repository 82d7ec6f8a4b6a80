"""A command run as a terminal runs it: its own process group, output read as it comes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import psutil


class Terminal:
    """A command in its own process group, as a shell's foreground job; output collected."""

    def __init__(self, command: str | list[str], cwd: Path, env: dict[str, str]) -> None:
        """`command`: a shell line (as a person types it) or an argv list."""
        self.proc = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for(self, text: str, timeout: float) -> None:
        with self._seen:
            found = self._seen.wait_for(
                lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                timeout,
            )
        assert found and any(text in line for line in self.lines), self.output

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def processes_under(*paths: Path) -> list[psutil.Process]:
    """Processes whose command line names one of `paths` (the venv, the stack's dir)."""
    names = [str(p) for p in paths]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if any(name in line for name in names):
            found.append(proc)
    return found
