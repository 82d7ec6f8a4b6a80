"""Quotas and the queue end to end: real requester, agent and hivectl processes."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Cluster, poll

pytestmark = pytest.mark.e2e


def queued(cluster: Cluster) -> list[dict[str, object]]:
    return list(json.loads(cluster.hivectl("job", "list", "--queued", "-o", "json").stdout))


def test_work_over_a_cpu_quota_waits_with_the_reason_and_runs_after(cluster: Cluster) -> None:
    cluster.up("node-1")
    shown = cluster.hivectl("user", "quota", "admin", "--cpu", "1", "--queued", "5")
    assert shown.stdout.split("\n")[1].split() == ["cpu", "1", "-", "1"]
    first = cluster.submit("--engine", "process", "--cpu", "1", "--", "sleep", "60")
    cluster.wait_job(first, "RUNNING")
    second = cluster.submit("--engine", "process", "--cpu", "1", "--priority", "70", "--",
                            "true")  # fmt: skip
    waiting = cluster.wait_job(second, "QUEUED")
    assert waiting["reason"] == "quota: admin uses 1 of 1 CPU"
    [listed] = queued(cluster)
    assert (listed["job_id"], listed["position"], listed["reason"]) == (
        second,
        1,
        "quota: admin uses 1 of 1 CPU",
    )
    table = cluster.hivectl("job", "list", "--queued").stdout.splitlines()
    assert table[0].split()[:4] == ["POSITION", "ID", "OWNER", "PRIORITY"]
    assert table[1].split()[:4] == ["1", second, "admin", "70"]
    cluster.hivectl("job", "stop", first)  # the earlier work ends: the second runs
    assert cluster.wait_job(second, "COMPLETED")["state"] == "COMPLETED"
    poll(lambda: queued(cluster) == [], what="an empty queue")


def test_quota_commands_show_set_clear_and_refuse_bad_input(cluster: Cluster) -> None:
    cluster.start_requester()
    cluster.hivectl("user", "quota", "--default", "--cpu", "16", "--memory", "32GiB")
    cluster.hivectl("user", "add", "alice", "--output", str(cluster.base / "alice.toml"))
    cluster.hivectl("user", "quota", "alice", "--cpu", "8", "--gpu", "1")
    shown = json.loads(cluster.hivectl("user", "quota", "alice", "-o", "json").stdout)[0]
    assert shown["effective"] == {"cpu": 8.0, "memory": 32 * 2**30, "gpu": 1, "queued": None}
    cluster.hivectl("user", "quota", "alice", "--clear", "cpu")
    shown = json.loads(cluster.hivectl("user", "quota", "alice", "-o", "json").stdout)[0]
    assert shown["effective"]["cpu"] == 16.0  # the default's, once hers is cleared
    for bad, said in (
        (["alice", "--default"], "name a user, or give --default"),
        (["alice", "--cpu", "lots"], "'lots' is not a CPU amount"),
        (["Alice!", "--cpu", "1"], "user"),
        (["alice", "--clear", "disk"], "invalid --clear 'disk'"),
        (["alcie", "--cpu", "1"], "no user 'alcie' (hivectl user list shows them)"),
    ):
        refused = cluster.hivectl("user", "quota", *bad, check=False)
        assert refused.returncode != 0 and said in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    over = cluster.hivectl("job", "submit", "--priority", "101", "busybox", "--", "true",
                           check=False)  # fmt: skip
    assert over.returncode == 2 and "priority" in over.stderr
