"""The Python client (`hive.Client`, `hive.AsyncClient`) and `hivectl job submit -f` of
many jobs, against a real requester (its embedded NATS) and process agents."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import hive
from tests.e2e.conftest import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
TRUE = {"engine": "process", "command": ["true"]}


@pytest.fixture
def stack(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A requester and two process agents, approved and HEALTHY; this process reads
    no hivectl config of its own (the client is given the URL and credentials)."""
    monkeypatch.setenv("HIVE_CONFIG", cluster.env["HIVE_CONFIG"])
    for name in ("HIVE_NATS__URL", "HIVE_NATS__CREDENTIALS_FILE", "HIVE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    cluster.up("node-1", "node-2")
    yield cluster


def client(stack: Cluster) -> hive.Client:
    return hive.Client(stack.url, credentials_file=stack.operator)


def test_submit_many_then_wait_from_plain_synchronous_code(stack: Cluster) -> None:
    specs = [TRUE] * 500
    with client(stack) as c:
        ids = c.submit_many(specs)
        assert len(set(ids)) == 500 and all(i.startswith("j-") for i in ids)
        jobs = c.wait(ids, timeout=240)
        assert list(jobs) == ids
        assert {job.state for job in jobs.values()} == {hive.JobState.COMPLETED}
        # The same ids again (a script retrying the whole batch): nothing new is made.
        assert c.submit_many(specs, job_ids=ids) == ids
        assert sorted(job.job_id for job in c.list()) == sorted(ids)
        assert len(c.list(state="COMPLETED")) == 500


def test_errors_name_what_is_wrong(stack: Cluster) -> None:
    with client(stack) as c:
        with pytest.raises(hive.NotFound, match="job 'j-0000000000000000' not found"):
            c.get("j-0000000000000000")
        with pytest.raises(hive.InvalidSpec) as bad:
            c.submit({**TRUE, "resources": {"cpu": "2x"}})
        assert bad.value.field == "resources.cpu"
        assert str(bad.value) == (
            "invalid job spec: resources.cpu: '2x' is not a CPU amount (like 0.5 or 500m)"
        )
        with pytest.raises(hive.InvalidSpec) as many:
            c.submit_many([TRUE, {**TRUE, "comand": ["x"]}])
        assert many.value.index == 1
        with pytest.raises(hive.InvalidId):
            c.submit(TRUE, job_id="job-1")
        assert c.list() == []  # nothing was sent
    with pytest.raises(
        hive.Unreachable, match=re.escape("cannot reach NATS at nats://127.0.0.1:1: ")
    ):
        hive.Client("nats://127.0.0.1:1").get("j-0000000000000000")


async def test_the_async_client_watches_stops_and_pages(stack: Cluster) -> None:
    async with hive.AsyncClient(stack.url, credentials_file=stack.operator) as c:
        done = await c.submit({"engine": "process", "command": ["sh", "-c", "echo hi"]})
        seen = [state async for job_id, state in c.watch([done]) if job_id == done]
        assert seen[-1] is hive.JobState.COMPLETED and len(seen) == len(set(seen))
        slow = await c.submit({"engine": "process", "command": ["sleep", "60"]})
        await c.stop(slow, "not needed")
        stopped = (await c.wait([slow], timeout=30))[slow]
        assert (stopped.state, stopped.reason) == (hive.JobState.STOPPED, "not needed")
        with pytest.raises(hive.WaitTimeout) as late:
            await c.wait([await c.submit({"engine": "process", "command": ["sleep", "60"]})], 0.5)
        assert len(late.value.pending) == 1 and late.value.done == {}


def test_executions_page_through_a_job(stack: Cluster) -> None:
    """Needs the requester's `job executions` handler (hive.api.job.executions)."""
    with client(stack) as c:
        job_id = c.submit({**TRUE, "count": 3})
        c.wait([job_id], timeout=60)
        try:
            executions = list(c.executions(job_id))
        except hive.RemoteError as exc:
            if exc.code != "unknown_verb":
                raise
            pytest.skip("this requester does not answer hive.api.job.executions yet")
        assert len(executions) == 3 and {e.job_id for e in executions} == {job_id}
        assert [e.exec_id for e in c.executions(job_id, state="COMPLETED")] == [
            e.exec_id for e in executions
        ]


def test_hivectl_submits_a_yaml_stream_and_a_json_list(stack: Cluster, tmp_path: Path) -> None:
    stream = tmp_path / "jobs.yaml"
    stream.write_text(
        "engine: process\ncommand: ['true']\n---\nengine: process\ncommand: [echo, two]\n"
        "---\nname: third\nengine: process\ncommand: [sh, -c, 'exit 0']\n"
    )
    waited = stack.hivectl("job", "submit", "-f", str(stream))
    ids = waited.stdout.split()
    assert len(set(ids)) == 3, waited.stdout
    assert "3 jobs: 3 COMPLETED" in waited.stderr
    assert {stack.job(i)["state"] for i in ids} == {"COMPLETED"}

    listed = tmp_path / "jobs.json"
    listed.write_text(json.dumps([TRUE, {"engine": "process", "command": ["false"]}]))
    ids = json.loads(
        stack.hivectl("job", "submit", "-f", str(listed), "--no-wait", "-o", "json").stdout
    )
    assert len(ids) == 2
    failing = stack.hivectl("job", "submit", "-f", str(listed), check=False)
    assert failing.returncode == 1
    assert "2 jobs: 1 COMPLETED, 1 FAILED" in failing.stderr
    assert "FAILED" in failing.stderr.splitlines()[-2]


def test_a_bad_job_in_a_file_of_many_sends_none(stack: Cluster, tmp_path: Path) -> None:
    stream = tmp_path / "jobs.yaml"
    stream.write_text("engine: process\ncommand: ['true']\n---\nengine: process\ncomand: [x]\n")
    refused = stack.hivectl("job", "submit", "-f", str(stream), check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"Error: {stream}:5: unknown field 'comand' (did you mean 'command'?)"
    )
    assert stack.hivectl("job", "list", "-o", "json").stdout.strip() == "[]"
