"""A hivectl that is waiting when its requester or NATS dies says so in one line.

A `job submit` waits for its job to end and a `job logs --follow` for the next line;
both hold a NATS connection open. When the requester is killed (its embedded
nats-server goes with it) or the nats-server alone is, each must end with exit 1 and
one line on stderr naming what was lost, never a nats-py traceback.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import Cluster, poll
from tests.e2e.test_jobs import approved

pytestmark = pytest.mark.e2e

SUBMITTED = "j-00000000000000d1"  # the waiting submit's job, chosen so the test can watch it
SCRIPT = "echo started; sleep 60"


def hivectl(cluster: Cluster, out: Path, *args: str) -> subprocess.Popen[bytes]:
    """hivectl in the background, its stdout into `out` (polled) and stderr kept."""
    return subprocess.Popen(
        [sys.executable, "-m", "hivectl.cli.main", "--nats-url", cluster.url, *args],
        env=cluster.env | {"HIVE_NATS__CREDENTIALS_FILE": str(cluster.operator)},
        stdout=out.open("wb"),
        stderr=subprocess.PIPE,
    )


def kill(cluster: Cluster, victim: str) -> None:
    requester = cluster.procs["requester"]
    if victim == "requester":
        cluster.signal("requester", signal.SIGKILL)  # its nats-server dies with it
        return
    servers = [p for p in psutil.Process(requester.pid).children() if "nats-server" in p.name()]
    servers[0].kill()
    requester.wait(15)  # the requester follows its server, exit 1
    cluster.procs.pop("requester")


def _one_of(lines: list[str], causes: list[str], tail: str) -> bool:
    """One line: `Error: <a cause>`, where "no requester" goes on to say what to check
    (and `tail`, when given, ends it)."""
    if len(lines) != 1:
        return False
    line = lines[0]
    return any(
        line == f"Error: {why}{tail}"
        or (
            (why.startswith("no requester") and line.startswith(f"Error: {why} at "))
            and line.endswith(tail)
        )
        for why in causes
    )


def ended(proc: subprocess.Popen[bytes]) -> tuple[int, list[str]]:
    _, stderr = proc.communicate(timeout=30)
    return proc.returncode, stderr.decode().splitlines()


@pytest.mark.parametrize("victim", ["requester", "nats"])
def test_a_waiting_submit_and_a_following_logs_end_in_one_line(
    cluster: Cluster, tmp_path: Path, victim: str
) -> None:
    approved(cluster, "node-1")
    followed = cluster.submit("--engine", "process", "--", "sh", "-c", SCRIPT)
    cluster.wait_job(followed, "RUNNING")
    logs_out, submit_out = tmp_path / "logs.out", tmp_path / "submit.out"
    logs = hivectl(cluster, logs_out, "job", "logs", "--follow", followed)
    submit = hivectl(cluster, submit_out, "job", "submit", "--id", SUBMITTED,
                     "--engine", "process", "--", "sh", "-c", SCRIPT)  # fmt: skip
    # Both are waiting: the logs have been followed this far, and the submitted job
    # runs (so its submit was answered long ago) and has written its first line.
    poll(lambda: logs_out.read_bytes() == b"started\n", what="logs --follow to follow")
    cluster.wait_job(SUBMITTED, "RUNNING")
    poll(lambda: cluster.hivectl("job", "logs", SUBMITTED).stdout == "started\n",
         what="the submitted job to start")  # fmt: skip

    kill(cluster, victim)

    lost = (
        f"lost the connection to NATS at {cluster.url}: connection closed "
        "(is the requester running?)"
    )
    # A killed requester may be missed by a request sent just before its server went.
    gone = (
        [lost, "no requester is answering on hive.api.job.get"] if victim == "requester" else [lost]
    )
    code, lines = ended(logs)
    assert code == 1 and _one_of(lines, gone, ""), lines
    code, lines = ended(submit)
    still = f"; {SUBMITTED} may still run: see `hivectl job describe {SUBMITTED}`"
    assert code == 1 and _one_of(lines, gone, still), lines
    assert submit_out.read_bytes() == b""
    # Back again, so the agent can stop its jobs and leave in good order.
    cluster.start_requester(auto_approve=True)
