"""Operator labels end to end: real requester and agents, hivectl as an operator runs it."""

from __future__ import annotations

import platform
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hivectl.core.labels import label_value
from tests.e2e.conftest import Cluster, poll

pytestmark = pytest.mark.e2e


def test_operator_labels_beat_the_nodes_own_across_restarts_and_steer_jobs(
    cluster: Cluster,
) -> None:
    cluster.start_requester(auto_approve=True)
    cluster.start_agent("node-1", "pool=silver", "zone=a")
    cluster.start_agent("node-2", "pool=gold")
    poll(lambda: cluster.states().get("node-1") == cluster.states().get("node-2") ==
         ("APPROVED", "HEALTHY"), what="two healthy agents")  # fmt: skip
    assert (
        cluster.hivectl("node", "label", "node-1", "pool=gold", "-m", "gpu pool").stdout == "Ok\n"
    )
    assert cluster.hivectl("node", "label", "node-2", "pool=silver").stdout == "Ok\n"

    # node-1's agent comes back saying other things of itself.
    cluster.signal("node-1", signal.SIGTERM)
    cluster.start_agent("node-1", "pool=bronze", "zone=b")
    back = {"pool": "bronze", "zone": "b"}
    node = poll(
        lambda: (n := cluster.nodes()["node-1"])["info"]["labels"] == back
        and n["health"] == "HEALTHY" and n,
        what="node-1 back with its new labels",
    )  # fmt: skip
    auto = {
        "hive.io/os": "linux",
        "hive.io/arch": label_value(platform.machine()),
        "hive.io/hostname": label_value(socket.gethostname()),
    }
    assert node["operator_labels"] == {"pool": "gold"}
    assert node["labels"] == {**auto, "pool": "gold", "zone": "b"}

    described = cluster.hivectl("node", "describe", "node-1").stdout.splitlines()
    at = described.index("Node labels:     pool=bronze  (operator: pool=gold)")
    assert described[at + 1 : at + 3] == ["                 zone=b", "Operator labels: pool=gold"]
    assert "                 hive.io/os=linux" in described[:at]

    listed = cluster.hivectl("node", "list", "-l", "pool=gold", "--no-headers").stdout
    assert [line.split()[0] for line in listed.splitlines()] == ["node-1"]
    assert listed.split()[-1] == "pool=gold,zone=b"  # the table leaves Hive's own out
    wide = cluster.hivectl("node", "list", "-l", "pool=gold", "-o", "wide").stdout
    merged = ",".join(f"{k}={v}" for k, v in sorted({**auto, "pool": "gold", "zone": "b"}.items()))
    assert merged in wide.splitlines()[1].split()  # the LABELS column (REASON comes last)

    job_id = cluster.submit("--engine", "process", "-l", "pool=gold", "--count", "4", "--", "true")
    job = cluster.wait_job(job_id, "COMPLETED", "FAILED")
    assert job["state"] == "COMPLETED", job
    assert {e["node_id"] for e in job["executions"]} == {"node-1"}


def test_the_agent_refuses_hive_labels_at_start(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    started = subprocess.run(
        [sys.executable, "-m", "nodeagent", "run", "--label", "hive.io/gpu-model=H100",
         "--nats-url", "nats://127.0.0.1:1", "--state-dir", str(tmp_path / "state")],
        env={"PATH": "/usr/bin:/bin", "HIVE_CONFIG": str(empty)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (started.returncode, started.stdout) == (2, "")
    [line] = started.stderr.strip().splitlines()
    assert line.startswith("hive-nodeagent: invalid configuration (")
    assert line.endswith(
        "labels: label 'hive.io/gpu-model': the hive.io/ prefix is reserved for the labels "
        "Hive sets itself (os, arch, hostname, gpu-model)"
    )
