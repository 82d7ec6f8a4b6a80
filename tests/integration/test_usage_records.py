"""Usage records with two requesters on a real nats-server: each ended execution is
recorded once, by whoever wrote its end, and a new leader records what its predecessor
wrote but did not live to record."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from hivectl.core.bus import request
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import ExecState, JobState, Measured
from hivectl.core.subjects import Subjects
from hivectl.core.usage import UsageBy, UsageReportReply, UsageReportRequest, UsageRow
from requester.service import Requester
from tests.integration.test_requester_jobs import compute, config, execution, spec, state, submit
from tests.support.cluster import RunningRequester, wait_for
from tests.support.simcompute import SimCompute

S = Subjects()
ES = ExecState


@pytest.fixture
async def pair(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[list[Requester]]:
    async with contextlib.AsyncExitStack() as stack:
        requesters = [
            await stack.enter_async_context(
                RunningRequester(
                    config(nats_server.url, tmp_path / name, name=name, leader_lease=1.0)
                )
            )
            for name in ("req-a", "req-b")
        ]
        yield requesters


async def report(nc: Client, **fields: object) -> list[UsageRow]:
    reply = await request(
        nc, S.api("usage", "report"), UsageReportRequest(**fields), UsageReportReply, timeout=5
    )
    return list(reply.rows)


def executions_in(req: Requester) -> int:
    assert req.usage is not None
    rows, _ = req.usage.book.report(since=None, by=UsageBy.NODE)
    return sum(r.executions for r in rows)


async def run_to_end(req: Requester, node: SimCompute, nc: Client, measured: float) -> str:
    job_id = await submit(nc, spec(cpu=2.0, engine="docker"))
    # Either requester may have taken the submit: the leader's view may lag a moment.
    await wait_for(lambda: req.jobs is not None and req.jobs.get(job_id), what="the job")
    placed = await execution(req, job_id, lambda e: e.state is ES.ACCEPTED, "accepted")
    await node.update(placed.exec_id, job_id, ES.RUNNING)
    await node.update(
        placed.exec_id, job_id, ES.COMPLETED, exit_code=0, measured=Measured(cpu_seconds=measured)
    )
    await state(req, job_id, JobState.COMPLETED)
    return job_id


async def stored_records(nc: Client) -> int:
    info = await nc.jetstream().stream_info(S.usage_stream)
    return int(info.state.messages)


async def test_each_execution_is_recorded_once_through_a_failover(
    pair: list[Requester], nc: Client
) -> None:
    leader = await wait_for(
        lambda: next((r for r in pair if r.leadership and r.leadership.is_leader), None),
        what="a leader",
    )
    follower = next(r for r in pair if r is not leader)
    node = await compute(leader, nc, "n1")
    await run_to_end(leader, node, nc, measured=1.5)
    # Every requester reads the stream: either answers the report.
    await wait_for(lambda: all(executions_in(r) == 1 for r in pair), what="both books")
    (row,) = await report(nc, by=UsageBy.NODE)
    assert (row.node, row.executions, row.completed, row.measured_cpu_seconds) == ("n1", 1, 1, 1.5)

    # The leader writes the next execution's end and dies before its record is stored.
    assert leader.jobs is not None
    leader.jobs.usage = lambda records: None
    await run_to_end(leader, node, nc, measured=0.5)
    assert await stored_records(nc) == 1
    leader.stop()
    await wait_for(
        lambda: follower.leadership is not None and follower.leadership.is_leader,
        timeout=10,
        what="the follower to take over",
    )
    await wait_for(lambda: executions_in(follower) == 2, what="the record published again")
    assert await stored_records(nc) == 2  # the first execution's record was not repeated
    rows = await report(nc, user="admin")
    assert [(r.user, r.executions, r.measured_cpu_seconds) for r in rows] == [("admin", 2, 2.0)]
    assert rows[0].cpu_seconds > 0  # 2 cores for the time between RUNNING and COMPLETED


async def test_a_record_published_twice_is_stored_once(pair: list[Requester], nc: Client) -> None:
    leader = await wait_for(
        lambda: next((r for r in pair if r.leadership and r.leadership.is_leader), None),
        what="a leader",
    )
    node = await compute(leader, nc, "n1")
    job_id = await run_to_end(leader, node, nc, measured=1.0)
    await wait_for(lambda: all(executions_in(r) == 1 for r in pair), what="both books")
    assert leader.usage is not None and leader.jobs is not None
    from requester.usage.records import usage_records

    job = leader.jobs.get(job_id)
    assert job is not None
    again = usage_records(job, job.executions)
    for req in pair:  # both requesters publish it again, as after a failover
        assert req.usage is not None
        req.usage.publisher.send(again)
    await wait_for(
        lambda: sum(r.usage.publisher.duplicates for r in pair if r.usage) == 2,
        what="both repeats acknowledged as duplicates",
    )
    assert await stored_records(nc) == 1
    assert all(executions_in(r) == 1 for r in pair)
