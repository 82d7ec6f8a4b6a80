"""Operating the daemons: systemd readiness, and the metrics both of them serve."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hivectl.core.api import NodeListReply, NodeListRequest
from hivectl.core.bus import connect_daemon, request
from hivectl.core.config import MetricsSettings, NatsSettings, NodeAgentConfig
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import JobSpec, JobState, JobSubmitReply, JobSubmitRequest
from hivectl.core.models import Approval
from hivectl.core.subjects import Subjects
from nodeagent.service import NodeAgent
from tests.support.cluster import RunningRequester, requester_config, wait_for

S = Subjects()
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def receive(sock: socket.socket, want: str, timeout: float) -> list[str]:
    """Datagrams until one has the line `want`; all of them, in order."""
    sock.settimeout(timeout)
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got.append(sock.recv(4096).decode())
        if want in got[-1].splitlines():
            return got
    raise AssertionError(f"no {want} within {timeout}s (got {got})")


def spawn_requester(port: int, data_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    args = ["run", "--port", str(port), "--data-dir", str(data_dir)]
    return subprocess.Popen(
        [str(BIN / "hive-requester"), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_requester_notifies_ready_only_once_it_serves_and_stopping_on_sigterm(
    tmp_path: Path,
) -> None:
    port = free_port()
    address = tmp_path / "notify.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env |= {"NOTIFY_SOCKET": str(address), "HIVE_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        proc = spawn_requester(port, tmp_path / "req", env)
        try:
            ready = await asyncio.to_thread(receive, sock, "READY=1", 30)
            assert any(line.startswith("STATUS=") for line in ready[-1].splitlines())
            # READY came only once it serves: the API answers at once, first time.
            operator = tmp_path / "req" / "credentials" / "operator.toml"
            settings = NatsSettings(url=f"nats://127.0.0.1:{port}", credentials_file=operator)
            nc = await connect_daemon(settings, "test")
            try:
                reply = await request(
                    nc, S.api("node", "list"), NodeListRequest(), NodeListReply, timeout=2
                )
            finally:
                await nc.close()
            assert isinstance(reply, NodeListReply)
            assert [n.node_id for n in reply.nodes] == ["requester"]
            proc.send_signal(signal.SIGTERM)
            stopping = await asyncio.to_thread(receive, sock, "STOPPING=1", 10)
            assert "READY=1" not in "\n".join(stopping)  # one READY, then STOPPING
            assert await asyncio.to_thread(proc.wait, 10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def scrape(port: int | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


async def test_both_daemons_serve_metrics_after_a_registration_and_a_job(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    metrics = MetricsSettings(enabled=True, port=0)
    req_cfg = requester_config(
        nats_server.url, tmp_path / "req", auto_approve=True, metrics=metrics,
        unhealthy_after=5.0, disconnected_after=10.0, scheduler_interval=0.1,
    )  # fmt: skip
    agent_cfg = NodeAgentConfig(
        name="node-1",
        state_dir=tmp_path / "agent",
        nats=NatsSettings(url=nats_server.url),
        heartbeat_interval=0.1,
        resource_update_interval=0.2,
        info_update_interval=0.3,
        executors={"docker": {"enabled": False}, "process": {"enabled": True}},
        metrics=metrics,
    )
    async with RunningRequester(req_cfg) as req:
        agent = NodeAgent(agent_cfg, request_timeout=2.0)
        task = asyncio.create_task(agent.serve())
        try:
            await wait_for(
                lambda: agent.executions is not None and agent.executions.taking_offers,
                timeout=20,
                what="the agent to take offers",
            )
            nc = await connect_daemon(NatsSettings(url=nats_server.url), "test")
            try:
                spec = JobSpec(engine="process", command=["sh", "-c", "echo hi"])
                submitted = await request(
                    nc, S.api("job", "submit"), JobSubmitRequest(spec=spec), JobSubmitReply,
                    timeout=5,
                )  # fmt: skip
            finally:
                await nc.close()
            assert isinstance(submitted, JobSubmitReply)
            assert req.jobs is not None
            jobs = req.jobs
            await wait_for(
                lambda: (
                    (job := jobs.get(submitted.job_id)) is not None
                    and job.state is JobState.COMPLETED
                ),
                timeout=20,
                what="the job to complete",
            )
            await wait_for(lambda: agent.executions is not None and not agent.executions.runs)
            got = await asyncio.to_thread(scrape, req.metrics_port)
            theirs = await asyncio.to_thread(scrape, agent.metrics_port)
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)

    assert got[("hive_nodes", (("approval", Approval.APPROVED.value),))] == 1.0
    assert got[("hive_nodes", (("approval", Approval.PENDING.value),))] == 0.0
    assert got[("hive_jobs", (("state", "COMPLETED"),))] == 1.0
    assert got[("hive_executions", (("state", "COMPLETED"),))] == 1.0
    assert got[("hive_job_offers_total", ())] == 1.0
    assert got[("hive_offer_seconds_count", ())] == 1.0
    assert got[("hive_scheduler_placement_seconds_count", ())] >= 1.0
    assert got[("hive_api_requests_total", (("noun", "job"),))] >= 1.0
    assert got[("hive_leader", ())] == 1.0  # the only requester leads
    assert got[("hive_leader_elections_total", (("how", "vacant"),))] == 1.0
    assert got[("hive_leader_elections_total", (("how", "takeover"),))] == 0.0
    # The scheduler and the update consumer may race each other even alone: counted.
    assert ("hive_job_writes_lost_races_total", ()) in got

    assert theirs[("hive_agent_executions_total", (("state", "COMPLETED"),))] == 1.0
    assert theirs[("hive_agent_executions_total", (("state", "FAILED"),))] == 0.0
    assert theirs[("hive_agent_executions_running", ())] == 0.0
    assert theirs[("hive_agent_offers_total", (("result", "accepted"),))] == 1.0
    assert theirs[("hive_agent_offers_total", (("result", "rejected"),))] == 0.0
    assert theirs[("hive_agent_heartbeats_sent_total", ())] >= 1.0
    assert theirs[("hive_agent_joined", ())] == 1.0
    for resource in ("cpu", "memory", "disk", "gpu"):
        allocatable = theirs[
            ("hive_agent_capacity", (("kind", "allocatable"), ("resource", resource)))
        ]
        available = theirs[("hive_agent_capacity", (("kind", "available"), ("resource", resource)))]
        assert available == allocatable, resource
    assert theirs[("hive_agent_capacity", (("kind", "allocatable"), ("resource", "cpu")))] > 0
