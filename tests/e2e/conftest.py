"""End-to-end set-up: the real daemons and hivectl, each as its own process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Fast thresholds; the heartbeat interval leaves several beats inside `unhealthy_after`.
REQUESTER_ENV = {
    "HIVE_UNHEALTHY_AFTER": "1.5s",
    "HIVE_DISCONNECTED_AFTER": "3s",
    "HIVE_HEALTH_CHECK_INTERVAL": "100ms",
}
AGENT_ENV = {
    "HIVE_HEARTBEAT_INTERVAL": "300ms",
    "HIVE_RESOURCE_UPDATE_INTERVAL": "1s",
    "HIVE_INFO_UPDATE_INTERVAL": "1s",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(check: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition") -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Cluster:
    """A requester (with its embedded NATS) and named node agents, as processes."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.operator = self.compute = base / "no-credentials-yet"
        empty = base / "empty.toml"
        empty.write_text("")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
        self.env["HIVE_CONFIG"] = str(empty)
        self.env["HIVE_LOG__FORMAT"] = "json"

    def start_requester(
        self, *, auto_approve: bool = False, extra_env: dict[str, str] | None = None
    ) -> None:
        approve = "--auto-approve" if auto_approve else "--no-auto-approve"
        args = ["requester", "run", "--port", str(self.port), "--data-dir",
                str(self.base / "req"), approve]  # fmt: skip
        self._spawn("requester", args, REQUESTER_ENV | (extra_env or {}))
        # The embedded server admits role credentials only; the requester writes them.
        creds = self.base / "req" / "credentials"
        poll(lambda: (creds / "operator.toml").exists(), what="the role credentials")
        self.operator = creds / "operator.toml"
        self.compute = creds / "compute.toml"
        poll(
            lambda: self.hivectl("node", "list", check=False).returncode == 0,
            what="the requester to answer",
        )

    def start_agent(
        self,
        name: str,
        *labels: str,
        docker_host: str | None = None,
        extra_env: dict[str, str] | None = None,
        url: str | None = None,
        flags: tuple[str, ...] = (),
    ) -> None:
        """A node agent; `url`: another way to the NATS server (a proxy, say)."""
        args = ["nodeagent", "run", "--nats-url", url or self.url, "--name", name,
                "--state-dir", str(self.base / name), *flags]  # fmt: skip
        for label in labels:
            args += ["--label", label]
        engines = {
            "HIVE_EXECUTORS__PROCESS__ENABLED": "true",
            "HIVE_EXECUTORS__DOCKER__ENABLED": "true" if docker_host else "false",
            "HIVE_JOB_GRACE_PERIOD": "2s",
        }
        if docker_host:
            engines["HIVE_EXECUTORS__DOCKER__HOST"] = docker_host
        engines["HIVE_NATS__CREDENTIALS_FILE"] = str(self.compute)
        self._spawn(name, args, AGENT_ENV | engines | (extra_env or {}))

    def _spawn(self, name: str, args: list[str], extra: dict[str, str]) -> None:
        log = (self.base / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=self.env | extra,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )

    def signal(self, name: str, signum: int) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signum)
        proc.wait(20)

    def port_is_free(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) != 0

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def hivectl(
        self, *args: str, check: bool = True, url: str | None = None, actor: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """hivectl as an operator runs it; `url`: another way to the NATS server; `actor`:
        who the operator says they are (HIVE_ACTOR)."""
        named = {"HIVE_ACTOR": actor} if actor else {}
        result = subprocess.run(
            [sys.executable, "-m", "hivectl.cli.main", "--nats-url", url or self.url, *args],
            env=self.env | {"HIVE_NATS__CREDENTIALS_FILE": str(self.operator)} | named,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"hivectl {' '.join(args)} failed: {result.stderr}")
        return result

    def nodes(self) -> dict[str, dict[str, Any]]:
        listed = json.loads(self.hivectl("node", "list", "-o", "json").stdout)
        return {node["node_id"]: node for node in listed}

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(json.loads(self.hivectl("job", "describe", job_id, "-o", "json").stdout))

    def submit(self, *args: str) -> str:
        """Submit without waiting; the job id."""
        return self.hivectl("job", "submit", "--id-only", *args).stdout.strip()

    def wait_job(self, job_id: str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        found = poll(
            lambda: (job := self.job(job_id))["state"] in states and job,
            timeout=timeout,
            what=f"{job_id} to be {'/'.join(states)}",
        )
        return dict(found)

    def up(self, *agents: str) -> None:
        """A requester that approves every node, and `agents` started and HEALTHY."""
        self.start_requester(auto_approve=True)
        for name in agents:
            self.start_agent(name)
        poll(
            lambda: all(self.states().get(n) == ("APPROVED", "HEALTHY") for n in agents),
            what=f"{len(agents)} healthy agents",
        )

    def states(self) -> dict[str, tuple[str, str]]:
        return {i: (n["approval"], n["health"]) for i, n in self.nodes().items()}

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "requester"] + ["requester"]:
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()
