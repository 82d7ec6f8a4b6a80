"""Usage accounting and node reliability, end to end: real daemons, hivectl as a process."""

from __future__ import annotations

import json
import signal
from typing import Any

from tests.e2e.conftest import Cluster, poll

BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass"


def usage(cluster: Cluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(cluster.hivectl("usage", "-o", "json", *args).stdout))


def reported(cluster: Cluster, executions: int) -> dict[str, Any]:
    """The usage report once it counts `executions` (records reach the book a moment
    after the job ends)."""
    return dict(
        poll(
            lambda: (
                (r := usage(cluster))["rows"] and r["rows"][0]["executions"] == executions and r
            ),
            what=f"usage of {executions} executions",
        )
    )


def test_usage_matches_what_ran_and_survives_a_requester_kill9(cluster: Cluster) -> None:
    """Requested CPU x wall time of jobs of known size adds up (within 5%), the CPU a
    busy job burned is measured, and a requester killed with -9 reports the same after
    its restart: nothing lost, nothing counted twice."""
    cluster.up("node-1")
    sleeps = [("1", 4.0), ("0.5", 4.0), ("0.25", 4.0)]
    jobs = [cluster.submit("--engine", "process", "--cpu", cpu, "--", "sleep", f"{secs:g}")
            for cpu, secs in sleeps]  # fmt: skip
    jobs.append(cluster.submit("--engine", "process", "--cpu", "0.25", "--memory", "512MiB",
                               "--", "python3", "-c", BUSY))  # fmt: skip
    for job_id in jobs:
        assert cluster.wait_job(job_id, "COMPLETED", "FAILED")["state"] == "COMPLETED"
    expected = sum(float(cpu) * secs for cpu, secs in sleeps) + 0.25 * 1.0
    report = reported(cluster, len(jobs))
    (row,) = report["rows"]
    assert row["user"] == "admin" and row["completed"] == len(jobs)
    assert expected <= row["cpu_seconds"] <= expected * 1.05, (expected, row)
    assert 0.95 <= row["measured_cpu_seconds"] < 1.5 and row["measured_executions"] == 4
    assert row["memory_gib_seconds"] > 0.5 * 1.0  # 512MiB for about a second

    cluster.signal("requester", signal.SIGKILL)  # its embedded NATS goes down with it
    poll(cluster.port_is_free, what="the embedded NATS to exit")
    cluster.start_requester(auto_approve=True)
    assert usage(cluster)["rows"] == report["rows"]
    by_node = usage(cluster, "--by", "node", "--since", "1h")["rows"]
    assert [(r["node"], r["executions"]) for r in by_node] == [("node-1", len(jobs))]
    table = cluster.hivectl("usage", "--node", "node-1").stdout.splitlines()
    assert table[0].split()[:3] == ["USER", "EXECS", "COMPLETED"]
    assert table[1].split()[:3] == ["admin", str(len(jobs)), str(len(jobs))]


def test_a_node_that_lost_work_ranks_below_and_min_reliability_keeps_work_off(
    cluster: Cluster,
) -> None:
    cluster.up("node-1", "node-2")
    first = cluster.submit("--engine", "process", "--retries", "1", "--",
                           "sh", "-c", "sleep 3; echo finished")  # fmt: skip
    lossy = cluster.wait_job(first, "RUNNING")["executions"][-1]["node_id"]
    good = "node-2" if lossy == "node-1" else "node-1"
    cluster.signal(lossy, signal.SIGKILL)  # its execution is LOST, then done on `good`
    assert cluster.wait_job(first, "COMPLETED", "FAILED", timeout=40)["state"] == "COMPLETED"
    cluster.start_agent(lossy)
    poll(lambda: cluster.states()[lossy] == ("APPROVED", "HEALTHY"), what=f"{lossy} back")
    described = poll(
        lambda: "(0 completed, 0 failed by the node, 1 lost)" in (
            text := cluster.hivectl("node", "describe", lossy).stdout) and text,
        what="the lost execution in node describe",
    )  # fmt: skip
    assert "Reliability:" in described and "0.82" in described
    lines = cluster.hivectl("node", "list", "-o", "wide").stdout.splitlines()
    column = lines[0].split().index("RELIAB")
    shown = {line.split()[0]: line.split()[column] for line in lines[1:]}
    assert (shown[lossy], shown[good]) == ("0.82", "0.91")  # good: one completed

    # Both nodes are free and fit: every job goes to the one that lost nothing.
    placed = [cluster.submit("--engine", "process", "--", "true") for _ in range(3)]
    for job_id in placed:
        job = cluster.wait_job(job_id, "COMPLETED")
        assert [e["node_id"] for e in job["executions"]] == [good]

    # With the reliable node out of service, a job that asks for more than the lossy
    # node scores waits, saying why, and runs once the reliable one is back.
    cluster.hivectl("node", "cordon", good)
    picky = cluster.submit("--engine", "process", "--min-reliability", "0.85", "--", "true")
    queued = cluster.wait_job(picky, "QUEUED")
    assert "reliability 0.85 or more (best: 0.82" in queued["reason"], queued["reason"]
    cluster.hivectl("node", "uncordon", good)
    job = cluster.wait_job(picky, "COMPLETED")
    assert [e["node_id"] for e in job["executions"] if e["state"] != "REJECTED"] == [good]
