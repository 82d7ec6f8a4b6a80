"""Logs and results of the sizes users bring, read back whole with bounded memory."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_jobs import approved

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
MiB = 1024 * 1024
RSS_LIMIT = 150 * MiB
PEAKRSS = Path(__file__).resolve().parents[1] / "support" / "peakrss.py"


def peak_rss_of_pid(pid: int) -> int:
    """A running process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def assert_bounded_memory(cluster: Cluster, hivectl_rss: int) -> None:
    """hivectl, the agent and the requester each peaked under RSS_LIMIT."""
    sizes = {
        "hivectl": hivectl_rss,
        "agent": peak_rss_of_pid(cluster.procs["node-1"].pid),
        "requester": peak_rss_of_pid(cluster.procs["requester"].pid),
    }
    print("peak RSS, MiB:", {k: round(v / MiB) for k, v in sizes.items()})  # seen with -s
    assert all(v < RSS_LIMIT for v in sizes.values()), {k: v // MiB for k, v in sizes.items()}


def hivectl_measured(
    cluster: Cluster, tmp_path: Path, *args: str, stdout: Path
) -> tuple[subprocess.CompletedProcess[bytes], int]:
    rss_file = tmp_path / "hivectl.rss"
    argv = [sys.executable, str(PEAKRSS), str(rss_file), sys.executable, "-m",
            "hivectl.cli.main", "--nats-url", cluster.url, *args]  # fmt: skip
    with stdout.open("wb") as out:
        done = subprocess.run(
            argv,
            env=cluster.env | {"HIVE_NATS__CREDENTIALS_FILE": str(cluster.operator)},
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=240,
        )
    return done, int(rss_file.read_text())


def test_logs_of_50_mb_come_back_whole(cluster: Cluster, tmp_path: Path) -> None:
    approved(cluster, "node-1")
    size = 50 * 1000 * 1000
    script = f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {size}"
    job_id = cluster.submit("--engine", "process", "--", "sh", "-c", script)
    cluster.wait_job(job_id, "COMPLETED", timeout=120)
    out = tmp_path / "log.txt"
    done, rss = hivectl_measured(cluster, tmp_path, "job", "logs", job_id, stdout=out)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size == size
    expected = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(expected).digest()
    assert_bounded_memory(cluster, hivectl_rss=rss)


def test_results_of_200_mb_come_back_whole(cluster: Cluster, tmp_path: Path) -> None:
    approved(cluster, "node-1")
    script = (
        "mkdir -p out && head -c 100000000 /dev/urandom > out/a.bin"
        " && head -c 100000000 /dev/urandom > out/b.bin && sha256sum out/a.bin out/b.bin"
    )
    job_id = cluster.submit("--engine", "process", "--output", "out", "--", "sh", "-c", script)
    job = cluster.wait_job(job_id, "COMPLETED", "FAILED", timeout=180)
    assert job["state"] == "COMPLETED", job
    sums = cluster.hivectl("job", "logs", job_id).stdout
    dest = tmp_path / "results"
    listing = tmp_path / "listing.txt"
    done, rss = hivectl_measured(
        cluster, tmp_path, "job", "results", job_id, "-d", str(dest), stdout=listing
    )
    assert done.returncode == 0, done.stderr
    exec_dir = next(dest.iterdir())
    for line in sums.splitlines():
        digest, name = line.split()
        assert hashlib.sha256((exec_dir / name).read_bytes()).hexdigest() == digest
    assert_bounded_memory(cluster, hivectl_rss=rss)


def test_caps_cut_a_log_and_outputs_and_say_so(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_requester(auto_approve=True)
    caps = {"HIVE_MAX_LOG_BYTES": "1MiB", "HIVE_MAX_OUTPUT_BYTES": "1MiB"}
    cluster.start_agent("node-1", extra_env=caps)
    script = (
        "mkdir out && head -c 600000 /dev/zero > out/a && head -c 600000 /dev/zero > out/b"
        " && yes | head -c 3000000"
    )
    job_id = cluster.submit("--engine", "process", "--output", "out", "--", "sh", "-c", script)
    job = cluster.wait_job(job_id, "COMPLETED", "FAILED", timeout=60)
    assert job["state"] == "COMPLETED", job  # a cap cuts what is kept, not the job
    logs = cluster.hivectl("job", "logs", job_id)
    assert len(logs.stdout) == 1024 * 1024
    assert "max_log_bytes cut this log: 1951424 more bytes were written and dropped" in (
        logs.stderr
    )
    described = cluster.hivectl("job", "describe", job_id).stdout
    assert "log cut at the node's max_log_bytes (1 MiB): 1.9 MiB left out" in described
    assert "outputs cut at the node's max_output_bytes (1 MiB): 1 file(s)" in described
    cluster.hivectl("job", "results", job_id, "-d", str(tmp_path / "r"))
    kept = [p.name for p in (tmp_path / "r").glob("*/out/*")]
    assert len(kept) == 1  # the second file would have crossed the cap
