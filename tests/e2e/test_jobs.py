"""Jobs end to end: real requester, agents and hivectl processes, Docker on the test engine."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
import pytest

from hivectl.core import codec
from hivectl.core.jobs import JobSubmitRequest
from tests.e2e.conftest import Cluster, poll
from tests.support.dockerd import PrivateDockerd
from tests.support.replycut import ReplyCut

pytestmark = pytest.mark.e2e


def approved(cluster: Cluster, *names: str, docker_host: str | None = None) -> None:
    cluster.start_requester(auto_approve=True)
    for name in names:
        cluster.start_agent(name, f"name={name}", docker_host=docker_host)
    want = {name: ("APPROVED", "HEALTHY") for name in names}
    poll(lambda: {k: v for k, v in cluster.states().items() if k != "requester"} == want,
         what="approved healthy nodes")  # fmt: skip


def test_a_process_job_runs_and_shows_its_output(cluster: Cluster, tmp_path: Path) -> None:
    approved(cluster, "node-1")
    result = cluster.hivectl(
        "job", "submit", "--engine", "process", "--output", "out", "--",
        "sh", "-c", "echo hello-from-hive; echo oops >&2; mkdir out; echo 42 > out/answer",
    )  # fmt: skip
    assert result.stdout == "hello-from-hive\n"
    assert "oops" in result.stderr and "COMPLETED" in result.stderr
    job_id = cluster.hivectl("job", "list", "--no-headers").stdout.split()[0]
    logs = cluster.hivectl("job", "logs", job_id)
    assert logs.stdout == "hello-from-hive\n" and "oops" in logs.stderr
    target = tmp_path / "results"
    cluster.hivectl("job", "results", job_id, "-d", str(target))
    answers = list(target.rglob("answer"))
    assert [p.read_text() for p in answers] == ["42\n"]


@pytest.mark.docker
def test_a_docker_job_runs_on_the_engine(
    cluster: Cluster, docker_engine: PrivateDockerd, busybox_image: str, tmp_path: Path
) -> None:
    approved(cluster, "node-1", docker_host=docker_engine.base_url)
    script = "echo in-a-container; mkdir -p /outputs; id -u > /outputs/uid"
    job_id = cluster.submit(busybox_image, "--output", "/outputs", "--", "sh", "-c", script)
    job = cluster.wait_job(job_id, "COMPLETED", "FAILED")
    assert job["state"] == "COMPLETED", job
    assert cluster.hivectl("job", "logs", job_id).stdout == "in-a-container\n"
    cluster.hivectl("job", "results", job_id, "-d", str(tmp_path / "r"))
    assert [p.name for p in (tmp_path / "r").rglob("uid")] == ["uid"]
    leftovers = docker_engine.client().containers.list(all=True, filters={"label": "hive.exec"})
    assert leftovers == []


def test_jobs_that_cannot_be_placed_say_why(cluster: Cluster) -> None:
    approved(cluster, "node-1")
    too_big = cluster.submit("--engine", "process", "--cpu", "500", "--queue-timeout", "2s",
                             "--", "true")  # fmt: skip
    queued = cluster.wait_job(too_big, "QUEUED")["reason"]
    assert queued.startswith("the only node has ") and queued.endswith(" free, not 500 CPUs")
    failed = cluster.wait_job(too_big, "FAILED")
    assert failed["reason"] == f"queue timeout (2s): {queued}"
    wide = cluster.hivectl("job", "list", "-o", "wide").stdout
    assert f"queue timeout (2s): {queued}" in wide
    nowhere = cluster.submit("--engine", "process", "-l", "zone=mars", "--queue-timeout", "2s",
                             "--", "true")  # fmt: skip
    assert cluster.wait_job(nowhere, "QUEUED")["reason"] == "no node matches zone=mars"
    docker = cluster.submit("busybox", "--queue-timeout", "2s", "--", "true")
    assert cluster.wait_job(docker, "QUEUED")["reason"] == "no node has the docker executor enabled"
    described = cluster.hivectl("job", "describe", docker).stdout
    assert "Reason:        no node has the docker executor enabled" in described


def test_a_spec_no_node_can_run_is_refused_at_submit(cluster: Cluster) -> None:
    approved(cluster, "node-1")
    result = cluster.hivectl("job", "submit", "--engine", "process", "--output", "/etc/passwd",
                             "--", "cat", "/etc/passwd", check=False)  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")  # refused before anything is sent
    assert result.stderr.strip() == (
        "Error: invalid job spec: outputs.0: '/etc/passwd' must be a relative path inside "
        "the job's work dir, like 'out'"
    )
    assert cluster.hivectl("job", "list").stderr.strip() == "No jobs found."


def test_a_submit_whose_reply_is_lost_is_retried_and_runs_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """hivectl reaches NATS through a proxy that drops the requester's reply to the
    first submit and cuts the connection: hivectl connects again, sends the same
    submit (same job id), and gets the job the first one made. It runs once."""
    approved(cluster, "node-1")
    runs = tmp_path / "runs"
    with ReplyCut(f"127.0.0.1:{cluster.port}", "hive.api.job.submit") as proxy:
        result = cluster.hivectl(
            "--timeout", "2s", "job", "submit", "--engine", "process",
            "--", "sh", "-c", f"echo ran >> {runs}; echo done", url=proxy.url,
        )  # fmt: skip
    assert proxy.cut.is_set()
    sent = [codec.decode(payload(command), JobSubmitRequest) for command in proxy.requests]
    assert len(sent) == 2 and sent[0] == sent[1]  # the same id and spec, sent twice
    job_id = sent[0].job_id
    assert result.stdout == "done\n"
    assert f"sending it again as {job_id}" in result.stderr
    assert f"Job {job_id} COMPLETED" in result.stderr
    assert runs.read_text() == "ran\n"  # one run
    listed = json.loads(cluster.hivectl("job", "list", "-o", "json").stdout)
    assert [job["job_id"] for job in listed] == [job_id]  # one job


def payload(command: bytes) -> bytes:
    """The payload of a PUB or HPUB command as the proxy saw it (headers left out)."""
    line, body = command.split(b"\r\n", 1)
    words = line.split()
    headers = int(words[-2]) if words[0].upper() == b"HPUB" else 0
    return body[headers:-2]


def test_pending_and_rejected_nodes_never_get_work(cluster: Cluster) -> None:
    cluster.start_requester()
    for name in ("node-1", "node-2", "node-3"):
        cluster.start_agent(name)
    poll(lambda: len([s for s in cluster.states().values() if s[1] == "HEALTHY"]) == 4,
         what="three healthy nodes")  # fmt: skip
    cluster.hivectl("node", "approve", "node-1")
    cluster.hivectl("node", "reject", "node-3", "-m", "not ours")
    jobs = [cluster.submit("--engine", "process", "--", "echo", str(i)) for i in range(4)]
    for job_id in jobs:
        job = cluster.wait_job(job_id, "COMPLETED", "FAILED")
        assert job["state"] == "COMPLETED"
        assert {e["node_id"] for e in job["executions"]} == {"node-1"}


def test_stop_and_timeout_end_the_process_on_the_node(cluster: Cluster) -> None:
    approved(cluster, "node-1")
    running = cluster.submit("--engine", "process", "--", "sleep", "31.5")
    cluster.wait_job(running, "RUNNING")
    poll(lambda: sleeping(cluster, "31.5"), what="the job's process")
    assert cluster.hivectl("job", "stop", running).stdout == "Ok\n"
    assert cluster.wait_job(running, "STOPPED")["state"] == "STOPPED"
    poll(lambda: not sleeping(cluster, "31.5"), what="the stopped job's process to go")
    slow = cluster.submit("--engine", "process", "--timeout", "1s", "--", "sleep", "32.5")
    failed = cluster.wait_job(slow, "FAILED")
    assert "timeout" in failed["executions"][-1]["error"]
    poll(lambda: not sleeping(cluster, "32.5"), what="the timed-out process to go")


def sleeping(cluster: Cluster, duration: str) -> bool:
    """A `sleep DURATION` of this cluster's (its work dir is under the cluster's base), so
    another suite running on the machine at the same time cannot answer for it."""
    base = str(cluster.base)
    return any(
        p.info["cmdline"] == ["sleep", duration] and (p.info["cwd"] or "").startswith(base)
        for p in psutil.process_iter(["cmdline", "cwd"])
        if p.info["cmdline"]
    )


def test_a_job_on_a_killed_agent_is_lost_and_completes_elsewhere(cluster: Cluster) -> None:
    approved(cluster, "node-1", "node-2")
    job_id = cluster.submit("--engine", "process", "--retries", "1", "--",
                            "sh", "-c", "sleep 4; echo finished")  # fmt: skip
    first = cluster.wait_job(job_id, "RUNNING")["executions"][-1]["node_id"]
    cluster.signal(first, signal.SIGKILL)
    job = cluster.wait_job(job_id, "COMPLETED", "FAILED", timeout=40)
    assert job["state"] == "COMPLETED", job
    states = [(e["node_id"], e["state"]) for e in job["executions"]]
    other = "node-2" if first == "node-1" else "node-1"
    assert (first, "LOST") in states and (other, "COMPLETED") in states


def test_requester_kill9_while_jobs_run_loses_nothing(cluster: Cluster) -> None:
    approved(cluster, "node-1", "node-2")
    jobs = [cluster.submit("--engine", "process", "--", "sh", "-c", f"sleep 3; echo job-{i}")
            for i in range(3)]  # fmt: skip
    for job_id in jobs:
        cluster.wait_job(job_id, "RUNNING")
    cluster.signal("requester", signal.SIGKILL)  # its embedded NATS goes down with it
    poll(cluster.port_is_free, what="the embedded NATS to exit")
    cluster.start_requester(auto_approve=True)
    for i, job_id in enumerate(jobs):
        job = cluster.wait_job(job_id, "COMPLETED", "FAILED", timeout=40)
        assert job["state"] == "COMPLETED", job
        ran = [e for e in job["executions"] if e["state"] != "REJECTED"]
        assert len(ran) == 1, ran  # never run twice
        assert cluster.hivectl("job", "logs", job_id).stdout == f"job-{i}\n"
