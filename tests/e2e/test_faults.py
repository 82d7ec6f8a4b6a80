"""Faults an operator meets: nodes that die unseen, servers that go away."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from tests.e2e.conftest import Cluster, poll
from tests.e2e.test_jobs import approved

pytestmark = pytest.mark.e2e


def test_a_node_that_died_while_the_requester_was_down_loses_its_work(cluster: Cluster) -> None:
    approved(cluster, "node-1", "node-2")
    job_id = cluster.submit("--engine", "process", "--retries", "1", "--",
                            "sh", "-c", "sleep 2; echo finished")  # fmt: skip
    running = cluster.wait_job(job_id, "RUNNING")["executions"][-1]
    dead = running["node_id"]
    cluster.signal("requester", signal.SIGTERM)
    cluster.signal(dead, signal.SIGKILL)  # dies unseen: no requester hears it go
    cluster.start_requester(auto_approve=True)

    job = cluster.wait_job(job_id, "COMPLETED", "FAILED", timeout=30)
    assert job["state"] == "COMPLETED", job
    first = next(e for e in job["executions"] if e["exec_id"] == running["exec_id"])
    assert first["state"] == "LOST" and first["node_id"] == dead
    assert job["executions"][-1]["node_id"] != dead
    assert cluster.hivectl("job", "logs", job_id).stdout == "finished\n"
    poll(lambda: cluster.states()[dead][1] == "UNKNOWN", what=f"{dead} UNKNOWN")


def test_a_requester_whose_embedded_nats_dies_exits_non_zero(cluster: Cluster) -> None:
    cluster.start_requester()
    requester = cluster.procs["requester"]
    server = poll(
        lambda: [p for p in psutil.Process(requester.pid).children() if "nats-server" in p.name()],
        what="the embedded nats-server",
    )[0]
    started = time.monotonic()
    server.kill()
    assert requester.wait(10) == 1  # systemd's Restart=on-failure brings both back
    assert time.monotonic() - started < 10
    assert "the embedded nats-server exited (code -9)" in cluster.log("requester")
    cluster.procs.pop("requester")
