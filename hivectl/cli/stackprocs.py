"""The processes of `hivectl devstack`, and what keeps them up.

Each daemon is a `Child`: a process logging to a file in the stack's directory. The
stack restarts a child that exits on its own, as systemd's `Restart=on-failure` would,
and gives up on one that keeps failing (`RESTART_LIMIT` exits within
`RESTART_WINDOW`), so one broken agent never takes the others down with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hivectl.core.embedded import die_with_parent, on_main_thread
from hivectl.core.subjects import CONTAINER_LABEL_JOB, CONTAINER_LABEL_NODE

RESTART_LIMIT = 5  # exits within RESTART_WINDOW before a child is left stopped
RESTART_WINDOW = 60.0
RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # after the 1st, 2nd, ... exit in the window


@dataclass
class Child:
    """One daemon process of the stack, its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    exits: list[float] = field(default_factory=list)  # when it exited on its own
    restart_at: float | None = None  # when the supervisor starts it again
    given_up: bool = False

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches devstack alone; it stops them in order
                preexec_fn=die_with_parent if on_main_thread() else None,
            )
        self.restart_at = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def terminate(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> bool:
        """True once the process has exited (or never started), waiting up to `timeout`."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # The child leads its own session: its process group holds what it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def python_child(name: str, module_args: list[str], env: dict[str, str], base: Path) -> Child:
    """A child running `python -m <module_args>` with this interpreter."""
    return Child(name, [sys.executable, "-m", *module_args], env, base / f"{name}.log")


class Supervisor:
    """Restarts children that exit on their own, with back-off; says so in one line each."""

    def __init__(self, children: list[Child], say: Callable[[str], None]) -> None:
        self.children = children
        self.say = say
        self.incidents = 0  # exits seen: a stack with any keeps its directory

    def check(self, now: float | None = None) -> None:
        """One look at every child: note new exits, restart those whose delay is over."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.given_up:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.start()
            elif not child.running and child.proc is not None:
                self._exited(child, now)

    def _exited(self, child: Child, now: float) -> None:
        self.incidents += 1
        child.exits = [t for t in child.exits if now - t < RESTART_WINDOW] + [now]
        code = child.exit_code()
        if len(child.exits) >= RESTART_LIMIT:
            child.given_up = True
            self.say(
                f"{child.name} exited {len(child.exits)} times in {RESTART_WINDOW:g}s "
                f"(last code {code}); left stopped. Its log: {child.log}"
            )
            return
        delay = RESTART_DELAYS[min(len(child.exits), len(RESTART_DELAYS)) - 1]
        child.restart_at = now + delay
        self.say(
            f"{child.name} exited (code {code}); restarting it in {delay:g}s. Log: {child.log}"
        )

    def given_up(self) -> list[Child]:
        return [c for c in self.children if c.given_up]


def remove_left_containers(
    node_ids: list[str], since: datetime, docker_host: str | None, say: Callable[[str], None]
) -> int:
    """Remove the job containers these nodes created since `since`; how many went.

    An agent removes its containers as their jobs end; these are what a killed agent
    left. Only containers labelled with one of the stack's nodes and created after it
    started are touched, so another Hive on the same engine keeps its own.
    """
    import docker
    import docker.errors

    removed = 0
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        try:
            for node_id in node_ids:
                labels = [f"{CONTAINER_LABEL_NODE}={node_id}", CONTAINER_LABEL_JOB]
                for container in client.containers.list(all=True, filters={"label": labels}):
                    if _created(container.attrs) >= since:
                        container.remove(force=True)
                        removed += 1
        finally:
            client.close()
    except (docker.errors.DockerException, OSError) as exc:
        say(f"Could not look for containers jobs left: {exc}")
    return removed


def _created(attrs: dict[str, Any]) -> datetime:
    """Docker's `Created` (RFC 3339 with nanoseconds) as an aware datetime."""
    text = str(attrs.get("Created", "")).rstrip("Z")
    whole, _, fraction = text.partition(".")
    try:
        return datetime.fromisoformat(f"{whole}.{fraction[:6] or '0'}+00:00")
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
