"""Taking nodes out of service end to end: cordon, drain, uncordon, with real processes.

The ground Nomad's node-drain end-to-end tests cover: a deadline lets short work finish
and moves the rest when it passes (DeadlineFlag), `--force` moves it at once
(ForceFlag), ops jobs are left running (IgnoreSystem), and a node stays out of service
after its drain ends or is cancelled until an operator puts it back (KeepIneligible).
Jobs wait on files the test creates, so nothing here depends on how long a job takes.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import Cluster, poll
from tests.e2e.test_jobs import approved
from tests.e2e.test_node_walkthrough import node_events

pytestmark = pytest.mark.e2e


def waiting_on(flag: Path) -> list[str]:
    """A job that runs until `flag` exists, then completes."""
    return ["--", "sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.1; done; echo done"]


def submit(cluster: Cluster, *args: str) -> str:
    return cluster.submit("--engine", "process", "--retries", "0", *args)


def on(job: dict[str, Any], *states: str) -> list[str]:
    """The nodes of the job's executions in `states`, in the order they were made."""
    return [e["node_id"] for e in job["executions"] if e["state"] in states]


def describe(cluster: Cluster, node_id: str) -> str:
    return cluster.hivectl("node", "describe", node_id).stdout


def status(cluster: Cluster, node_id: str) -> str:
    rows = cluster.hivectl("node", "list", "--no-headers").stdout.splitlines()
    return next(row.split()[2] for row in rows if row.split()[0] == node_id)


def running_exec(exec_id: str) -> bool:
    """A job process of that execution runs on this machine."""
    for proc in psutil.process_iter(["environ"]):
        if (proc.info["environ"] or {}).get("HIVE_EXEC_ID") == exec_id:
            return True
    return False


def running_on(cluster: Cluster, job_id: str, node_id: str, timeout: float) -> dict[str, Any]:
    """The job once its one running execution is on `node_id`."""

    def moved() -> dict[str, Any] | None:
        job = cluster.job(job_id)
        return job if on(job, "RUNNING") == [node_id] else None

    return dict(poll(moved, timeout=timeout, what=f"{job_id} running on {node_id}"))


def events_of(cluster: Cluster, node_id: str) -> list[tuple[str, str, str, str]]:
    """(event, old, new, reason) of the node's cordon and drain events, oldest first."""
    kept = asyncio.run(node_events(cluster, node_id))
    ours = ("cordon", "uncordon", "drain")
    return [(e.event, e.old, e.new, e.reason) for e in kept if e.event in ours]


def on_node_1(cluster: Cluster, *jobs: list[str]) -> list[str]:
    """Jobs submitted while node-2 is cordoned (so they run on node-1), then node-2 back."""
    cluster.hivectl("node", "cordon", "node-2")
    ids = [submit(cluster, *job) for job in jobs]
    for job_id in ids:
        assert on(cluster.wait_job(job_id, "RUNNING"), "RUNNING") == ["node-1"]
    cluster.hivectl("node", "uncordon", "node-2")
    return ids


def test_a_cordoned_node_gets_no_new_work_while_its_running_job_finishes(
    cluster: Cluster, tmp_path: Path
) -> None:
    approved(cluster, "node-1", "node-2")
    go = tmp_path / "go"
    running = submit(cluster, "-l", "name=node-1", *waiting_on(go))
    cluster.wait_job(running, "RUNNING")

    assert cluster.hivectl("node", "cordon", "node-1", "-m", "disk errors").stdout == "Ok\n"
    assert status(cluster, "node-1") == "HEALTHY,cordoned"
    assert status(cluster, "node-2") == "HEALTHY"
    listed = cluster.hivectl("node", "list", "--filter-status", "cordoned", "--no-headers")
    assert [row.split()[0] for row in listed.stdout.splitlines()] == ["node-1"]
    described = describe(cluster, "node-1")
    assert "Scheduling:      cordoned: no new executions (disk errors)" in described

    # New work goes to node-2 only, however much of it there is.
    batch = submit(cluster, "--count", "4", "--", "true")
    assert set(on(cluster.wait_job(batch, "COMPLETED"), "COMPLETED")) == {"node-2"}
    pinned = submit(cluster, "-l", "name=node-1", "--", "true")
    reason = cluster.wait_job(pinned, "QUEUED")["reason"]
    assert reason == "no eligible node matches name=node-1; also 1 cordoned"

    # What ran on node-1 before goes on, and ends there.
    go.touch()
    assert on(cluster.wait_job(running, "COMPLETED"), "COMPLETED") == ["node-1"]

    # Back in service: the job that waited for it runs there.
    cluster.hivectl("node", "uncordon", "node-1", "-m", "disk replaced")
    assert on(cluster.wait_job(pinned, "COMPLETED"), "COMPLETED") == ["node-1"]
    assert status(cluster, "node-1") == "HEALTHY"
    assert events_of(cluster, "node-1") == [
        ("cordon", "schedulable", "cordoned", "disk errors"),
        ("uncordon", "cordoned", "schedulable", "disk replaced"),
    ]


def test_a_drain_lets_short_work_finish_and_moves_the_rest_at_the_deadline(
    cluster: Cluster, tmp_path: Path
) -> None:
    approved(cluster, "node-1", "node-2")
    short, long = on_node_1(cluster, waiting_on(tmp_path / "short"), ["--", "sleep", "60"])
    first = cluster.job(long)["executions"][0]["exec_id"]

    # Far from its deadline, the drain moves nothing: the short job finishes where it is.
    cluster.hivectl("node", "drain", "node-1", "--deadline", "10m", "-m", "kernel update")
    assert status(cluster, "node-1") == "HEALTHY,draining"
    (tmp_path / "short").touch()
    assert on(cluster.wait_job(short, "COMPLETED"), "COMPLETED") == ["node-1"]
    poll(lambda: "1 batch execution left; deadline in " in describe(cluster, "node-1"),
         what="the drain's progress")  # fmt: skip
    assert on(cluster.job(long), "RUNNING") == ["node-1"]

    # The deadline brought forward (a drain given again keeps its progress), and watched:
    # once it passes, the long job is moved to node-2.
    watch = cluster.hivectl("node", "drain", "node-1", "--deadline", "2s", "-m", "kernel update",
                            "--watch")  # fmt: skip
    assert watch.stdout == "Ok\n"
    assert watch.stderr.startswith("node-1: draining: 1 batch execution left; ")
    assert watch.stderr.splitlines()[-1] == "node-1: drained (1 execution moved to other nodes)"
    # No retry was used (the job has none), and node-1 stopped the old execution.
    job = cluster.wait_job(long, "RUNNING")
    moved = job["executions"][0]
    assert (moved["exec_id"], moved["state"]) == (first, "CANCELLED")
    assert moved["error"] == "moved off its node: node node-1 drained (its deadline passed)"
    assert on(job, "RUNNING", "ACCEPTED", "STARTING") == ["node-2"]
    assert job["executions"][1]["attempt"] == 0
    poll(lambda: not running_exec(first), what="node-1 to stop the moved execution")

    # The node stays cordoned once drained; its record and events say what happened.
    assert status(cluster, "node-1") == "HEALTHY,cordoned"
    described = describe(cluster, "node-1")
    assert "drained " in described and "; 1 execution moved" in described
    assert events_of(cluster, "node-1")[-4:] == [
        ("cordon", "schedulable", "cordoned", "kernel update"),
        ("drain", "", "draining", "kernel update"),
        ("drain", "draining", "draining", "kernel update"),
        ("drain", "draining", "drained", "no batch work left on the node; 1 execution moved "
         "to other nodes"),
    ]  # fmt: skip


def test_force_moves_batch_work_at_once_and_leaves_ops_jobs_running(
    cluster: Cluster, tmp_path: Path
) -> None:
    approved(cluster, "node-1", "node-2")
    (batch,) = on_node_1(cluster, ["--", "sleep", "60"])
    ops = submit(cluster, "--target", "all", *waiting_on(tmp_path / "ops"))
    poll(lambda: sorted(on(cluster.job(ops), "RUNNING")) == ["node-1", "node-2"],
         what="the ops job on both nodes")  # fmt: skip
    ops_on_1 = next(
        e["exec_id"] for e in cluster.job(ops)["executions"] if e["node_id"] == "node-1"
    )

    cluster.hivectl("node", "drain", "node-1", "--force", "-m", "fan failure")
    job = running_on(cluster, batch, "node-2", timeout=10)
    assert job["executions"][0]["error"] == "moved off its node: node node-1 drained (forced)"
    poll(lambda: status(cluster, "node-1") == "HEALTHY,cordoned", what="the drain to end")
    # The ops job was left alone: its execution on node-1 runs on, and ends there.
    assert sorted(on(cluster.job(ops), "RUNNING")) == ["node-1", "node-2"]
    assert running_exec(ops_on_1)
    end = events_of(cluster, "node-1")[-1]
    assert end == ("drain", "draining", "drained", "no batch work left on the node; "
                   "1 execution moved to other nodes; 1 ops execution left running")  # fmt: skip
    (tmp_path / "ops").touch()
    assert sorted(on(cluster.wait_job(ops, "COMPLETED"), "COMPLETED")) == ["node-1", "node-2"]


def test_a_cancelled_drain_keeps_the_node_cordoned_until_uncordoned(
    cluster: Cluster, tmp_path: Path
) -> None:
    approved(cluster, "node-1", "node-2")
    (job,) = on_node_1(cluster, waiting_on(tmp_path / "go"))
    cluster.hivectl("node", "drain", "node-1", "--no-deadline")
    poll(lambda: "1 batch execution left; no deadline" in describe(cluster, "node-1"),
         what="the drain's progress")  # fmt: skip
    cluster.hivectl("node", "drain", "node-1", "--cancel", "-m", "wrong node")
    assert status(cluster, "node-1") == "HEALTHY,cordoned"
    # A drain cancelled moves nothing; the node takes no new work until it is uncordoned.
    watched = cluster.hivectl("node", "drain", "node-1", "--monitor", check=False)
    assert watched.returncode == 1
    assert watched.stderr.splitlines() == [
        "node-1: drain cancelled",
        "Error: not drained: node-1 (cancelled)",
    ]
    assert on(cluster.job(job), "RUNNING") == ["node-1"]
    cluster.hivectl("node", "uncordon", "node-1")
    assert status(cluster, "node-1") == "HEALTHY"
    (tmp_path / "go").touch()
    cluster.wait_job(job, "COMPLETED")
    assert events_of(cluster, "node-1")[-4:] == [
        ("cordon", "schedulable", "cordoned", ""),
        ("drain", "", "draining", ""),
        ("drain", "draining", "cancelled", "wrong node"),
        ("uncordon", "cordoned", "schedulable", ""),
    ]


def test_a_drain_survives_a_requester_restart(cluster: Cluster) -> None:
    approved(cluster, "node-1", "node-2")
    (job,) = on_node_1(cluster, ["--", "sleep", "60"])
    cluster.hivectl("node", "drain", "node-1", "--deadline", "3s")
    cluster.signal("requester", signal.SIGTERM)
    poll(cluster.port_is_free, what="the embedded NATS to stop")
    cluster.start_requester(auto_approve=True)
    # The restarted requester found the drain in the node record and carried it out.
    moved = running_on(cluster, job, "node-2", timeout=20)
    assert moved["executions"][0]["error"].startswith("moved off its node: node node-1 drained")
    poll(lambda: status(cluster, "node-1") == "HEALTHY,cordoned", what="the drain to end")
    drain = json.loads(cluster.hivectl("node", "describe", "node-1", "-o", "json").stdout)["drain"]
    assert (drain["outcome"], drain["moved"], drain["remaining"]) == ("drained", 1, 0)


def test_bad_ids_change_nothing(cluster: Cluster) -> None:
    approved(cluster, "node-1")
    result = cluster.hivectl("node", "cordon", "node-1", "node-9", check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == "Error: node 'node-9' not found"
    assert status(cluster, "node-1") == "HEALTHY"
    refused = cluster.hivectl("node", "drain", "requester", check=False)
    assert refused.stderr.strip() == ("Error: the requester runs no jobs: it cannot be taken out")
    bad = cluster.hivectl("node", "drain", "node-1", "--deadline", "soon", check=False)
    assert bad.returncode == 2 and "invalid --deadline" in bad.stderr
    assert status(cluster, "node-1") == "HEALTHY"
