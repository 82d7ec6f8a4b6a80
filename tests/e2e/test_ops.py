"""Operating the daemons as processes: graceful and forced shutdown, and their logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest

from tests.e2e.conftest import Cluster, free_port, poll
from tests.e2e.test_jobs import approved, sleeping

pytestmark = pytest.mark.e2e

GRACE = 2.0  # HIVE_JOB_GRACE_PERIOD the Cluster gives its agents


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a daemon's log, each one JSON object (one line per event)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_sigterm_to_an_agent_stops_its_job_within_the_grace_period(cluster: Cluster) -> None:
    approved(cluster, "node-1")
    job_id = cluster.submit("--engine", "process", "--", "sleep", "60")
    running = cluster.wait_job(job_id, "RUNNING")["executions"][-1]
    poll(lambda: sleeping(cluster, "60"), what="the job's process")

    agent = cluster.procs.pop("node-1")
    started = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(GRACE + 5) == 0
    took = time.monotonic() - started
    assert GRACE <= took < GRACE + 5  # the job had its grace period, and no more
    assert not sleeping(cluster, "60")

    # The agent reports the execution CANCELLED, saying why. Nothing was wrong with the
    # work, so it waits for a node again without using a retry (the job has none).
    job = cluster.wait_job(job_id, "QUEUED")
    first = next(e for e in job["executions"] if e["exec_id"] == running["exec_id"])
    assert first["state"] == "CANCELLED", first
    assert first["error"] == "stopped by its node: agent shutting down"
    assert first["exit_code"] == 143  # SIGTERM to the job's process group

    # The agent's log: JSON lines, node_id bound throughout, job_id on the job's events.
    lines = json_lines(cluster.log("node-1"))
    assert any(line.get("node_id") == "node-1" for line in lines)
    about_job = [line for line in lines if line.get("job_id") == job_id]
    assert about_job and all(line["exec_id"] == running["exec_id"] for line in about_job)
    assert any("CANCELLED" in line["msg"] for line in about_job)

    # The agent back (a restart, an upgrade): the job runs again there.
    cluster.start_agent("node-1", "name=node-1")
    again = cluster.wait_job(job_id, "RUNNING")["executions"][-1]
    assert again["exec_id"] != running["exec_id"] and again["node_id"] == running["node_id"]
    poll(lambda: sleeping(cluster, "60"), what="the job's process, started again")


def test_requester_sigterm_drains_and_exits_while_agents_keep_running(cluster: Cluster) -> None:
    approved(cluster, "node-1")
    requester = cluster.procs.pop("requester")
    started = time.monotonic()
    requester.send_signal(signal.SIGTERM)
    assert requester.wait(10) == 0
    assert time.monotonic() - started < 5
    assert cluster.procs["node-1"].poll() is None
    lines = json_lines(cluster.log("requester"))
    assert any("stopped after" in line["msg"] for line in lines)
    # The agent rides it out and is back as soon as a requester is.
    poll(cluster.port_is_free, what="the embedded NATS to stop")
    cluster.start_requester(auto_approve=True)
    poll(lambda: cluster.states().get("node-1") == ("APPROVED", "HEALTHY"),
         what="node-1 to rejoin")  # fmt: skip
    assert cluster.procs["node-1"].poll() is None


def _read_until(stream: IO[str], text: str, timeout: float = 30) -> str:
    """The first line holding `text`; fails when the stream ends without one."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} not logged; got:\n{''.join(seen)}")


def test_a_second_sigint_forces_the_requester_out(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env |= {"HIVE_CONFIG": str(tmp_path / "none.toml"), "HIVE_LOG__FORMAT": "json"}
    (tmp_path / "none.toml").write_text("")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "hive-requester"),
            "run",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "req"),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        _read_until(proc.stderr, "serving on")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _read_until(proc.stderr, "SIGINT received", timeout=5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) == 130
        assert time.monotonic() - started < 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    # Its embedded nats-server dies with it rather than lingering on the port.
    poll(lambda: port_is_free(port), what="the embedded NATS to go with the requester")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _spawn_daemon(argv: list[str], tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    (tmp_path / "empty.toml").write_text("")
    clean |= {"HIVE_CONFIG": str(tmp_path / "empty.toml"), "HIVE_LOG__FORMAT": "json"}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / argv[0]), *argv[1:]],
        env=clean | env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_within(proc: subprocess.Popen[str], signum: int, seconds: float) -> str:
    """Signal `proc`; assert it exits 0 within `seconds`; the rest of its log."""
    started = time.monotonic()
    proc.send_signal(signum)
    try:
        code = proc.wait(seconds + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took = time.monotonic() - started
    assert proc.stderr is not None
    rest = proc.stderr.read()
    proc.stderr.close()
    assert code == 0, rest
    assert took < seconds, f"took {took:.1f}s to stop"
    return rest


UNREACHABLE = "nats://127.0.0.1:1"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("daemon", ["hive-requester", "hive-nodeagent"])
def test_a_daemon_that_cannot_reach_nats_stops_on_the_first_signal(
    daemon: str, signum: int, tmp_path: Path
) -> None:
    where = ["--data-dir"] if daemon == "hive-requester" else ["--name", "node-x", "--state-dir"]
    argv = [daemon, "run", "--nats-url", UNREACHABLE, *where, str(tmp_path / "state")]
    proc = _spawn_daemon(argv, tmp_path, HIVE_EXECUTORS__DOCKER__ENABLED="false")
    assert proc.stderr is not None
    _read_until(proc.stderr, f"nats: {UNREACHABLE}: ")  # it is retrying the connection
    rest = _stop_within(proc, signum, 2.0)
    assert f"{signal.Signals(signum).name} received, shutting down" in rest
    assert any("stopped after" in line["msg"] for line in json_lines(rest))


def test_an_agent_without_credentials_is_told_what_to_give(cluster: Cluster) -> None:
    cluster.start_requester()
    # The requester said, once, where it wrote the credentials an agent needs.
    creds = cluster.base / "req" / "credentials"
    said = [line["msg"] for line in json_lines(cluster.log("requester"))]
    assert any(f"wrote NATS credentials for each role to {creds}: " in msg for msg in said)

    argv = ["hive-nodeagent", "run", "--nats-url", cluster.url, "--name", "node-c",
            "--state-dir", str(cluster.base / "node-c")]  # fmt: skip
    agent = _spawn_daemon(argv, cluster.base, HIVE_EXECUTORS__DOCKER__ENABLED="false")
    assert agent.stderr is not None
    told = json.loads(_read_until(agent.stderr, "authorization violation"))
    assert told["level"] == "error"
    what, hint = told["msg"].split("; ", 1)
    assert what == (
        f"nats: {cluster.url} refused the connection (authorization violation) with no credentials"
    )
    assert hint.startswith("give the agent the compute role's credentials: ")
    assert "hive-nodeagent run --credentials PATH" in hint and "compute.toml" in hint
    rest = _stop_within(agent, signal.SIGTERM, 2.0)
    refused = [line["msg"] for line in json_lines(rest) if "authorization violation" in line["msg"]]
    assert refused == [], "said more than once"


def test_a_requester_signalled_as_it_starts_its_embedded_server_exits_with_it(
    tmp_path: Path,
) -> None:
    port = free_port()
    argv = ["hive-requester", "run", "--port", str(port), "--data-dir", str(tmp_path / "req")]
    proc = _spawn_daemon(argv, tmp_path)
    assert proc.stderr is not None
    # Logged just before the server is spawned: the signal lands while it starts up (or,
    # on a slow machine, just after); either way the requester stops, and the server too.
    _read_until(proc.stderr, "NATS credentials for each role")
    rest = _stop_within(proc, signal.SIGTERM, 2.0)
    assert any("stopped after" in line["msg"] for line in json_lines(rest))
    poll(lambda: port_is_free(port), what="the embedded NATS to stop with the requester")
