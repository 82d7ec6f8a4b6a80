"""`hivectl devstack` comes up, serves hivectl in another shell, and Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e


def test_devstack_up_listed_and_gone_after_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env |= {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    stack = subprocess.Popen(
        [sys.executable, "-m", "hivectl.cli.main", "devstack", "--computes", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert stack.stdout is not None
        for line in stack.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(90), "".join(lines) + (stack.stderr.read() if stack.poll() else "")
        children = psutil.Process(stack.pid).children(recursive=True)
        assert len(children) == 4  # nats-server, the requester and two agents
        # Another shell: no flags, no env; the context devstack wrote points at the stack.
        listed = subprocess.run(
            [sys.executable, "-m", "hivectl.cli.main", "node", "list", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listed.returncode == 0, listed.stderr
        nodes = {n["node_id"]: (n["approval"], n["health"]) for n in json.loads(listed.stdout)}
        assert nodes == {
            "requester": ("APPROVED", "HEALTHY"),
            "node-1": ("APPROVED", "HEALTHY"),
            "node-2": ("APPROVED", "HEALTHY"),
        }
        job = subprocess.run(
            [sys.executable, "-m", "hivectl.cli.main", "job", "submit", "--engine", "process",
             "--", "echo", "hello-from-devstack"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert job.returncode == 0, job.stderr
        assert job.stdout == "hello-from-devstack\n"
        # Without the operator credentials the stack's NATS refuses the connection.
        context = (tmp_path / "cfg" / "hive" / "hivectl.toml").read_text()
        url = context.split('url = "')[1].split('"')[0]
        empty = tmp_path / "empty.toml"
        empty.write_text("")
        anonymous = subprocess.run(
            [sys.executable, "-m", "hivectl.cli.main", "--config", str(empty),
             "--nats-url", url, "node", "list"],
            env={**env, "HOME": "/nonexistent"}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert anonymous.returncode == 1 and "authorization" in anonymous.stderr
        # As devstack says: an admin adds a user and hands the file over; it works alone.
        creds = tmp_path / "alice.creds.toml"
        added = subprocess.run(
            [sys.executable, "-m", "hivectl.cli.main", "user", "add", "alice", "--role",
             "submitter", "--output", str(creds)],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        as_alice = subprocess.run(
            [sys.executable, "-m", "hivectl.cli.main", "--config", str(empty), "--nats-url",
             url, "job", "submit", "--engine", "process", "--", "echo", "hello-from-alice"],
            env={**env, "HOME": "/nonexistent", "HIVE_NATS__CREDENTIALS_FILE": str(creds)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert as_alice.returncode == 0, as_alice.stderr
        assert as_alice.stdout == "hello-from-alice\n"
        stack.send_signal(signal.SIGINT)
        assert stack.wait(60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
        assert not (tmp_path / "cfg" / "hive" / "hivectl.toml").exists()
    finally:
        if stack.poll() is None:
            stack.kill()
