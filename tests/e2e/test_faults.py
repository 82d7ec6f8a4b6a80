"""Faults an operator meets: nodes that die unseen, servers that go away."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: a file system that can really fill up."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros into `directory` until its file system is full."""
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
    return filler


def test_a_full_store_says_storage_full_and_recovers(cluster: Cluster, small_disk: Path) -> None:
    cluster.start_requester(extra_env={"HIVE_EMBEDDED__STORE_DIR": str(small_disk / "nats")})
    before = cluster.submit("--engine", "process", "--", "true")
    filler = fill(small_disk)

    # A store's last pages still take a write or two: submit until it is really full.
    for _ in range(30):
        started = time.monotonic()
        refused = cluster.hivectl("job", "submit", "--id-only", "--engine", "process",
                                  "--name", "x" * 100, "--", "true", check=False)  # fmt: skip
        if refused.returncode != 0:
            break
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.startswith("Error: storage full: NATS cannot write to")
    assert f"{small_disk}/nats" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert time.monotonic() - started < 10  # an answer, not the client giving up

    filler.unlink()
    after = poll(
        lambda: cluster.hivectl("job", "submit", "--id-only", "--engine", "process", "--",
                                "true", check=False).stdout.strip(),
        timeout=30, what="submits to work again",
    )  # fmt: skip
    assert cluster.job(before)["job_id"] == before  # nothing stored before was lost
    assert cluster.job(after)["job_id"] == after
    assert "restarting the embedded nats-server" in cluster.log("requester")
