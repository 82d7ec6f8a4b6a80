"""devstack as a dependable dev tool: a dead daemon is restarted, one that keeps dying is
left stopped without taking the rest down, and a failed stack keeps its logs."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import poll
from tests.support.terminal import Terminal

pytestmark = pytest.mark.e2e


def devstack(tmp_path: Path, *args: str) -> Terminal:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env |= {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    argv = [sys.executable, "-m", "hivectl.cli.main", "devstack", *args]
    return Terminal(argv, tmp_path, env)


def daemon_pids(stack: Terminal) -> dict[str, int]:
    """name -> pid of the stack's requester and agents (nats-server left out)."""
    pids = {}
    for child in psutil.Process(stack.proc.pid).children(recursive=True):
        try:
            line = child.cmdline()  # a killed child not reaped yet is a zombie: not running
        except psutil.Error:
            continue
        if "--name" in line:
            pids[line[line.index("--name") + 1]] = child.pid
        elif "requester" in line:
            pids["requester"] = child.pid
    return pids


def stack_dir(stack: Terminal) -> Path:
    return Path(stack.output.split("State and logs: ")[1].split()[0])


def test_a_killed_agent_is_restarted_and_the_rest_stay_up(tmp_path: Path) -> None:
    stack = devstack(tmp_path, "--computes", "2")
    try:
        stack.wait_for("Press Ctrl-C", 90)
        before = daemon_pids(stack)
        os.kill(before["node-2"], signal.SIGKILL)
        stack.wait_for("node-2 exited (code -9); restarting it", 10)
        after = poll(
            lambda: (
                (pids := daemon_pids(stack)).get("node-2") not in (None, before["node-2"]) and pids
            ),
            what="node-2 to be started again",
        )
        assert after["requester"] == before["requester"]
        assert after["node-1"] == before["node-1"]
        # A stack that had trouble keeps its state and logs, and says where.
        where = stack_dir(stack)
        stack.ctrl_c()
        assert stack.proc.wait(60) == 0
        assert f"State and logs kept in {where}" in stack.output
        assert (where / "node-2.log").is_file()
    finally:
        stack.kill()


def test_an_agent_that_keeps_dying_is_left_stopped(tmp_path: Path) -> None:
    stack = devstack(tmp_path, "--computes", "2")
    try:
        stack.wait_for("Press Ctrl-C", 90)
        for _ in range(5):  # RESTART_LIMIT exits within a minute
            pid = poll(lambda: daemon_pids(stack).get("node-2"), what="node-2 running")
            os.kill(pid, signal.SIGKILL)
            poll(lambda p=pid: daemon_pids(stack).get("node-2") != p, what="node-2 to exit")
        stack.wait_for("node-2 exited 5 times in 60s (last code -9); left stopped", 15)
        assert "node-2" not in daemon_pids(stack)
        assert {"requester", "node-1"} <= set(daemon_pids(stack))
        assert stack.proc.poll() is None
    finally:
        stack.ctrl_c()
        stack.proc.wait(60)
        stack.kill()


def test_a_stack_that_fails_to_start_keeps_its_logs(tmp_path: Path) -> None:
    stack = devstack(tmp_path, "--computes", "1", "--ready-timeout", "0")
    assert stack.proc.wait(60) == 1
    assert "Error: the stack was not ready after 0s" in stack.output
    kept = Path(stack.output.split("State and logs kept in ")[1].split()[0])
    assert (kept / "requester.log").is_file() and (kept / "node-1.log").is_file()
    assert not psutil.Process(os.getpid()).children(recursive=True) or all(
        str(kept) not in " ".join(p.cmdline()) for p in psutil.process_iter()
    )
