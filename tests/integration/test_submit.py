"""Submitting jobs to a real requester on a real nats-server: a repeated submit gives
the job it made before, a spec no node could run is refused before anything is stored,
and a node's refusal for good fails the job at once instead of queueing it."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.bus import RemoteError
from hivectl.core.jobs import (
    ExecState,
    JobListReply,
    JobListRequest,
    JobSpec,
    JobState,
    JobSubmitReply,
    JobSubmitRequest,
    new_job_id,
)
from requester.service import Requester
from tests.integration.test_requester_jobs import (
    S,
    _events,
    call,
    compute,
    execution,
    job_of,
    requester,
    spec,
    state,
)

__all__ = ["requester"]  # the fixture, re-used from the requester's job tests


async def submit_as(nc: Client, job_id: str | None, job_spec: JobSpec) -> str:
    request = JobSubmitRequest(spec=job_spec, job_id=job_id)
    return str((await call(nc, "submit", request, JobSubmitReply)).job_id)


async def listed(nc: Client) -> list[str]:
    reply = await call(nc, "list", JobListRequest(), JobListReply)
    return [job.job_id for job in reply.jobs]


async def test_a_repeated_submit_gets_the_job_it_made_and_runs_it_once(
    requester: Requester, nc: Client
) -> None:
    node = await compute(requester, nc, "node-a")
    job_id, job_spec = new_job_id(), spec()
    assert await submit_as(nc, job_id, job_spec) == job_id
    placed = await execution(requester, job_id, lambda e: e.state is ExecState.ACCEPTED, "placed")
    # The reply was lost, say: the client sends the same request again, twice at once.
    again = await asyncio.gather(*(submit_as(nc, job_id, job_spec) for _ in range(2)))
    assert again == [job_id, job_id]
    assert await listed(nc) == [job_id]
    await node.update(placed.exec_id, job_id, ExecState.COMPLETED, exit_code=0)
    await state(requester, job_id, JobState.COMPLETED)
    assert len(node.offers) == 1 and len(job_of(requester, job_id).executions) == 1
    assert [e.reason for e in await _events(nc, job_id) if not e.old] == ["submitted"]


async def test_the_same_id_with_another_spec_is_refused_and_changes_nothing(
    requester: Requester, nc: Client
) -> None:
    job_id = await submit_as(nc, new_job_id(), spec(queue_timeout=60.0))
    before = job_of(requester, job_id)
    with pytest.raises(RemoteError) as info:
        await submit_as(nc, job_id, spec(queue_timeout=60.0, count=2))
    assert info.value.code == "exists"
    assert info.value.reason == (
        f"job {job_id} exists with another spec: submit this one with another id (or none)"
    )
    after = job_of(requester, job_id)  # the scheduler may have queued it meanwhile
    assert (after.spec, after.created_at) == (before.spec, before.created_at)
    assert await listed(nc) == [job_id]


async def test_two_submits_racing_for_one_id_make_one_job(requester: Requester, nc: Client) -> None:
    """Neither finds the id in memory: the bucket's create decides, and the loser
    answers with the winner's job."""
    job_id = new_job_id()
    ids = await asyncio.gather(*(submit_as(nc, job_id, spec()) for _ in range(8)))
    assert ids == [job_id] * 8
    assert await listed(nc) == [job_id]


async def test_a_client_that_sends_no_id_gets_one_picked(requester: Requester, nc: Client) -> None:
    first, second = await submit_as(nc, None, spec()), await submit_as(nc, None, spec())
    assert first != second and sorted(await listed(nc)) == sorted([first, second])


async def test_an_output_path_no_node_allows_is_refused_and_nothing_is_stored(
    requester: Requester, nc: Client
) -> None:
    """A client that skips the checks (an old or hand-made one) gets the rule the nodes
    apply from the requester: nothing is stored, no node sees an offer."""
    node = await compute(requester, nc, "node-a")
    body = codec.unpack(codec.encode(JobSubmitRequest(spec=spec(), job_id=new_job_id())))
    body["spec"].update(engine="process", image="", outputs=["out", "/etc/shadow"])
    reply = await nc.request(S.api("job", "submit"), codec.pack(body), timeout=5)
    answer = codec.decode(reply.data)
    assert answer.kind == "error" and answer.code == "invalid"  # type: ignore[attr-defined]
    assert answer.reason == (  # type: ignore[attr-defined]
        "spec.outputs.1: '/etc/shadow' must be a relative path inside the job's work dir, "
        "like 'out'"
    )
    assert await listed(nc) == [] and len(requester.jobs or []) == 0 and node.offers == []


async def test_a_refusal_for_good_fails_the_job_at_once_with_the_nodes_reason(
    requester: Requester, nc: Client
) -> None:
    strict = await compute(requester, nc, "node-a", cpu=8.0, policy=lambda o: (False, "no way"))
    strict.for_good = True
    other = await compute(requester, nc, "node-b", cpu=2.0)
    job_id = await submit_as(nc, None, spec(queue_timeout=60.0))
    failed = await state(requester, job_id, JobState.FAILED)
    assert failed.reason == "node-a refused it for good: no way"
    assert [(e.node_id, e.state) for e in failed.executions] == [("node-a", ExecState.REJECTED)]
    assert other.offers == [] and len(strict.offers) == 1  # not offered on, nor again


async def test_a_transient_refusal_still_waits_for_room(requester: Requester, nc: Client) -> None:
    busy = await compute(requester, nc, "node-a", policy=lambda o: (False, "no room now"))
    job_id = await submit_as(nc, None, spec(queue_timeout=60.0))
    queued = await state(requester, job_id, JobState.QUEUED)
    assert queued.reason == "every fitting node declined (node-a: no room now)"
    busy.policy = lambda o: (True, "")
    await execution(requester, job_id, lambda e: e.state is ExecState.ACCEPTED, "placed later")
    assert job_of(requester, job_id).state is not JobState.FAILED
