"""A node that loses the cluster never runs a batch job beside its re-placed copy, and
a node back from a crash, or from losing its state, has its work reconciled."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import Cluster, poll
from tests.e2e.test_jobs import approved
from tests.support.partition import Partition

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
# Each run stamps its start, then the time every 50 ms while it lives.
TICKING = (
    'date +%s.%N > "$RUNS/$HIVE_EXEC_ID.start"; '
    'for i in $(seq 400); do date +%s.%N > "$RUNS/$HIVE_EXEC_ID.tick"; sleep 0.05; done'
)


def healthy(cluster: Cluster, *names: str) -> None:
    poll(lambda: all(cluster.states().get(n) == ("APPROVED", "HEALTHY") for n in names),
         what=f"{', '.join(names)} approved and healthy")  # fmt: skip


def second_run(cluster: Cluster, job_id: str, first: str) -> dict[str, str]:
    def found() -> dict[str, str] | None:
        job = cluster.job(job_id)
        return next(
            (e for e in job["executions"] if e["exec_id"] != first and e["state"] == "RUNNING"),
            None,
        )

    return dict(poll(found, timeout=30, what="the job running again elsewhere"))


def stamp(runs: Path, exec_id: str, kind: str) -> float:
    return float(poll(lambda: (runs / f"{exec_id}.{kind}").read_text().strip(),
                      what=f"{exec_id}'s {kind} stamp"))  # fmt: skip


def job_processes(exec_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["environ"]):
        if (proc.info.get("environ") or {}).get("HIVE_EXEC_ID") == exec_id:
            found.append(proc)
    return found


def test_a_cut_off_agent_stops_its_work_before_the_copy_starts(
    cluster: Cluster, tmp_path: Path
) -> None:
    thresholds = {"HIVE_UNHEALTHY_AFTER": "2s", "HIVE_DISCONNECTED_AFTER": "6s"}
    cluster.start_requester(auto_approve=True, extra_env=thresholds)
    runs = tmp_path / "runs"
    runs.mkdir()
    with Partition(cluster.url) as network:
        cluster.start_agent("node-1", url=network.url)
        healthy(cluster, "node-1")
        job_id = cluster.submit("--engine", "process", "--retries", "1", "-e", f"RUNS={runs}",
                                "--", "sh", "-c", TICKING)  # fmt: skip
        first = cluster.wait_job(job_id, "RUNNING")["executions"][-1]["exec_id"]
        stamp(runs, first, "start")
        cluster.start_agent("node-2")  # where the copy can go
        healthy(cluster, "node-2")

        network.cut()  # silent: no reset, node-1 only misses its answers
        second = second_run(cluster, job_id, first)
        assert second["node_id"] == "node-2"
        first_ended, second_started = (
            stamp(runs, first, "tick"),
            stamp(runs, second["exec_id"], "start"),
        )
        print(f"first copy ended {second_started - first_ended:.2f}s before the second started")
        assert first_ended < second_started, (first_ended, second_started)
        assert "fenced: no contact with the cluster" in cluster.log("node-1")

        network.heal()
        lost = next(e for e in cluster.job(job_id)["executions"] if e["exec_id"] == first)
        assert lost["state"] == "LOST"  # what the requester decided stands


def test_a_frozen_agent_kills_its_stale_copy_when_it_wakes(
    cluster: Cluster, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    approved(cluster, "node-1")
    job_id = cluster.submit("--engine", "process", "--retries", "1", "-e", f"RUNS={runs}",
                            "--", "sh", "-c", TICKING)  # fmt: skip
    first = cluster.wait_job(job_id, "RUNNING")["executions"][-1]["exec_id"]
    stamp(runs, first, "start")
    cluster.start_agent("node-2", "name=node-2")
    healthy(cluster, "node-2")

    frozen = cluster.procs["node-1"]
    frozen.send_signal(signal.SIGSTOP)
    try:
        second_run(cluster, job_id, first)
        assert job_processes(first)  # the stale copy ran on while its agent was frozen
    finally:
        woke = time.monotonic()
        frozen.send_signal(signal.SIGCONT)
    poll(lambda: not job_processes(first), timeout=5, what="the stale copy to be killed")
    assert time.monotonic() - woke < 1.0
    assert "fenced: no contact with the cluster" in cluster.log("node-1")


def test_an_agent_killed_and_back_in_seconds_reruns_its_work_without_a_retry(
    cluster: Cluster,
) -> None:
    approved(cluster, "node-1")
    job_id = cluster.submit("--engine", "process", "--", "sh", "-c", "sleep 2; echo done")
    first = cluster.wait_job(job_id, "RUNNING")["executions"][-1]["exec_id"]
    cluster.signal("node-1", signal.SIGKILL)
    cluster.start_agent("node-1", "name=node-1")

    job = cluster.wait_job(job_id, "COMPLETED", "FAILED", timeout=40)
    assert job["state"] == "COMPLETED", job  # no retries, yet it ran again
    killed = next(e for e in job["executions"] if e["exec_id"] == first)
    assert killed["state"] == "CANCELLED"
    assert killed["error"] == "stopped by its node: the agent restarted while it ran"
    assert cluster.hivectl("job", "logs", job_id).stdout == "done\n"


def test_an_agent_that_lost_its_ledger_is_reconciled(cluster: Cluster) -> None:
    approved(cluster, "node-1")
    job_id = cluster.submit("--engine", "process", "--", "sh", "-c", "sleep 3; echo done")
    first = cluster.wait_job(job_id, "RUNNING")["executions"][-1]["exec_id"]
    poll(lambda: job_processes(first), what="the job's process")
    cluster.signal("node-1", signal.SIGKILL)
    (cluster.base / "node-1" / "executions.json").write_text('{"executions": [{"broken')
    cluster.start_agent("node-1", "name=node-1")

    poll(lambda: not job_processes(first), what="the orphaned job to be killed")
    job = cluster.wait_job(job_id, "COMPLETED", "FAILED", timeout=60)
    assert job["state"] == "COMPLETED", job
    gone = next(e for e in job["executions"] if e["exec_id"] == first)
    assert gone["state"] == "CANCELLED"
    assert gone["error"].startswith("stopped by its node: node node-1 does not hold it")
