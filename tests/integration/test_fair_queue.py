"""Quotas, priorities, fair share and backfill, against a real nats-server and
simulated compute nodes.

Jobs of users other than the built-in admin are submitted through the requester's own
job API with the verified user set, as the API router sets it for a signed request:
the same path (and the same checks) a submit from that user takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.auth import Identity
from hivectl.core.bus import RemoteError, request
from hivectl.core.config import SchedulerSettings
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import (
    ExecState,
    Job,
    JobListReply,
    JobListRequest,
    JobSpec,
    JobState,
    JobSubmitReply,
    JobSubmitRequest,
    Offer,
)
from hivectl.core.quotas import QuotaReply, QuotaSetRequest
from hivectl.core.subjects import Subjects
from hivectl.core.users import Role, UserAddReply, UserAddRequest
from requester.routing import USER
from requester.service import Requester
from tests.integration.test_requester_jobs import compute, config, job_of, spec, state
from tests.support.cluster import RunningRequester, wait_for
from tests.support.simcompute import SimCompute

S = Subjects()
ES = ExecState


@pytest.fixture
async def requester(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Requester]:
    async with RunningRequester(config(nats_server.url, tmp_path / "req")) as req:
        yield req


async def submit_as(req: Requester, owner: str, job_spec: JobSpec) -> str:
    """Submit as `owner`, through the requester's job API."""
    assert req.job_api is not None
    token = USER.set(owner)
    try:
        reply = await req.job_api.submit(codec.encode(JobSubmitRequest(spec=job_spec)))
    finally:
        USER.reset(token)
    assert isinstance(reply, JobSubmitReply)
    return reply.job_id


async def add_user(nc: Client, name: str) -> None:
    """A user of that name (a quota names one who exists)."""
    add = UserAddRequest(
        name=name, role=Role.SUBMITTER, public_key=Identity.generate().public_key, with_nats=False
    )
    await request(nc, S.api("user", "add"), add, UserAddReply, timeout=5)


async def set_quota(nc: Client, **fields: Any) -> QuotaReply:
    return await request(
        nc, S.api("quota", "set"), QuotaSetRequest(**fields), QuotaReply, timeout=5
    )


async def queue(nc: Client) -> list[Job]:
    reply = await request(
        nc,
        S.api("job", "list"),
        JobListRequest(queued=True, everyone=True),
        JobListReply,
        timeout=5,
    )
    return reply.jobs


def accepted(req: Requester, job_id: str) -> list[str]:
    """The exec ids of the job's executions the node took (ACCEPTED or later, active)."""
    live = (ES.ACCEPTED, ES.STARTING, ES.RUNNING)
    return [e.exec_id for e in job_of(req, job_id).executions if e.state in live]


async def finish(req: Requester, node: SimCompute, job_id: str) -> None:
    for exec_id in accepted(req, job_id):
        for step in (ES.RUNNING, ES.COMPLETED):
            await node.update(exec_id, job_id, step)
    await state(req, job_id, JobState.COMPLETED)


async def test_a_user_at_its_cpu_quota_waits_queued_and_runs_when_its_jobs_end(
    requester: Requester, nc: Client
) -> None:
    node = await compute(requester, nc, "big", cpu=16.0)
    with pytest.raises(RemoteError) as unknown:
        await set_quota(nc, user="alice", cpu=8)
    assert (unknown.value.code, str(unknown.value)) == (
        "not_found",
        "no user 'alice' (hivectl user list shows them)",
    )
    await add_user(nc, "alice")
    shown = await set_quota(nc, user="alice", cpu=8)
    assert (shown.own.cpu, shown.effective.cpu) == (8, 8)
    first = [await submit_as(requester, "alice", spec(cpu=4.0)) for _ in range(2)]
    for job_id in first:
        await wait_for(lambda j=job_id: accepted(requester, j), what="alice's first jobs placed")
    third = await submit_as(requester, "alice", spec(cpu=4.0, queue_timeout=0.5))
    held = await state(requester, third, JobState.QUEUED)
    assert held.reason == "quota: alice uses 8 of 8 CPUs"
    # The node has room: another user's work is not held by alice's quota.
    bob = await submit_as(requester, "bob", spec(cpu=4.0))
    await wait_for(lambda: accepted(requester, bob), what="bob's job placed")
    assert not accepted(requester, third)
    # Its queue timeout passes (and the scheduler looks at it every 0.1s): time its
    # owner's quota holds it is not time waiting for a node, so it does not fail.
    await asyncio.sleep(1.0)
    assert job_of(requester, third).state is JobState.QUEUED
    [waiting] = await queue(nc)
    assert (waiting.job_id, waiting.position, waiting.owner) == (third, 1, "alice")
    assert waiting.reason == "quota: alice uses 8 of 8 CPUs"
    await finish(requester, node, first[0])  # alice's earlier work ends: the third runs
    await wait_for(lambda: accepted(requester, third), what="alice's third job placed")
    assert await queue(nc) == []


async def test_a_batch_runs_as_much_of_itself_as_the_quota_allows(
    requester: Requester, nc: Client
) -> None:
    node = await compute(requester, nc, "big", cpu=16.0)
    await set_quota(nc, default=True, cpu=2)  # every user, alice among them
    job_id = await submit_as(requester, "alice", spec(cpu=1.0, count=5))
    await wait_for(lambda: len(accepted(requester, job_id)) == 2, what="2 of 5 placed")
    await wait_for(
        lambda: job_of(requester, job_id).reason == "quota: alice uses 2 of 2 CPUs",
        what="the quota named as the reason",
    )
    assert len(accepted(requester, job_id)) == 2
    exec_id = accepted(requester, job_id)[0]
    for step in (ES.RUNNING, ES.COMPLETED):
        await node.update(exec_id, job_id, step)
    await wait_for(lambda: len(accepted(requester, job_id)) == 2 and exec_id not in accepted(
        requester, job_id), what="a third execution placed as one ended")  # fmt: skip


async def test_a_submit_over_the_queued_jobs_quota_is_refused(
    requester: Requester, nc: Client
) -> None:
    await set_quota(nc, user="admin", queued=2)  # no node: every job waits
    for _ in range(2):
        await request(
            nc, S.api("job", "submit"), JobSubmitRequest(spec=spec()), JobSubmitReply, timeout=5
        )
    with pytest.raises(RemoteError) as refused:
        await request(
            nc, S.api("job", "submit"), JobSubmitRequest(spec=spec()), JobSubmitReply, timeout=5
        )
    assert refused.value.code == "quota"
    assert "admin has 2 jobs waiting to start, its quota allows 2" in str(refused.value)
    assert len(await queue(nc)) == 2
    cleared = await set_quota(nc, user="admin", clear=["queued"])
    assert cleared.effective.queued is None
    await request(
        nc, S.api("job", "submit"), JobSubmitRequest(spec=spec()), JobSubmitReply, timeout=5
    )


async def test_a_quota_request_naming_no_one_or_bad_limits_changes_nothing(
    requester: Requester, nc: Client
) -> None:
    for bad in ({}, {"user": "Alice!", "cpu": 1}, {"user": "alice", "cpu": -1}):
        with pytest.raises(RemoteError):
            await request(nc, S.api("quota", "set"), _raw_quota_set(bad), QuotaReply, timeout=5)
    with pytest.raises(RemoteError) as both:
        await set_quota(nc, user="alice", cpu=4, clear=["cpu"])
    assert "both set and cleared" in str(both.value)
    assert requester.quotas.effective("alice").is_empty()


def _raw_quota_set(fields: dict[str, Any]) -> QuotaSetRequest:
    """A request as a client could send it, unchecked (the requester must check it)."""
    return QuotaSetRequest.model_construct(**fields)


async def test_a_high_priority_job_overtakes_queued_lower_priority_ones(
    requester: Requester, nc: Client
) -> None:
    node = await compute(requester, nc, "one-cpu", cpu=1.0)
    busy = await submit_as(requester, "alice", spec(cpu=1.0))
    await wait_for(lambda: accepted(requester, busy), what="the node taken")
    low = [await submit_as(requester, "alice", spec(cpu=1.0, priority=10)) for _ in range(4)]
    urgent = await submit_as(requester, "alice", spec(cpu=1.0, priority=90))
    for job_id in (*low, urgent):
        await state(requester, job_id, JobState.QUEUED)
    listed = await queue(nc)
    assert [j.job_id for j in listed] == [urgent, *low]
    assert [j.position for j in listed] == [1, 2, 3, 4, 5]
    await finish(requester, node, busy)
    await wait_for(lambda: accepted(requester, urgent), what="the urgent job placed next")
    assert not any(accepted(requester, j) for j in low)


async def test_a_small_job_backfills_beside_a_big_one_waiting_for_room(
    requester: Requester, nc: Client
) -> None:
    await compute(requester, nc, "four-cpu", cpu=4.0)
    running = await submit_as(requester, "alice", spec(cpu=3.0))
    await wait_for(lambda: accepted(requester, running), what="3 of 4 CPUs taken")
    big = await submit_as(requester, "alice", spec(cpu=4.0, priority=90))
    await state(requester, big, JobState.QUEUED)
    small = await submit_as(requester, "bob", spec(cpu=1.0, priority=10))
    await wait_for(lambda: accepted(requester, small), what="the small job placed")
    waiting = job_of(requester, big)
    assert waiting.state is JobState.QUEUED
    # 1 CPU free before the small job was placed, 0 after (the reason follows the room).
    assert waiting.reason.startswith("the only node has "), waiting.reason
    assert waiting.reason.endswith(" free, not 4 CPUs"), waiting.reason


async def test_a_big_job_that_waited_too_long_gets_a_node_held_until_it_fits(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    """Past `backfill_reserve_after`, small work no longer backfills around the big
    job: its node is held (drains) until the big job fits, then the hold ends."""
    hold = SchedulerSettings(backfill_reserve_after=0.5)
    async with RunningRequester(config(nats_server.url, tmp_path / "r", scheduler=hold)) as req:
        node = await compute(req, nc, "four-cpu", cpu=4.0)
        running = await submit_as(req, "alice", spec(cpu=3.0))
        await wait_for(lambda: accepted(req, running), what="3 of 4 CPUs taken")
        big = await submit_as(req, "alice", spec(cpu=4.0))
        await wait_for(
            lambda: job_of(req, big).reason.endswith("; node four-cpu is held for it"),
            what="the node held for the big job",
        )
        small = await submit_as(req, "bob", spec(cpu=1.0))
        waiting = await state(req, small, JobState.QUEUED)
        assert (
            waiting.reason
            == f"node four-cpu is held for job {big}, which waited over 0.5s for room"
        )
        await finish(req, node, running)  # the node drains: the big job fits
        await wait_for(lambda: accepted(req, big), what="the big job placed")
        assert req.scheduler is not None and req.scheduler.reservations.held is None
        await finish(req, node, big)
        await wait_for(lambda: accepted(req, small), what="the small job placed after it")


# -- fairness at scale ---------------------------------------------------------------------
NODES, CPUS = 10, 10.0  # 100 one-CPU slots
DURATION = 1.0  # seconds each simulated execution runs
A_JOBS, B_JOBS = 1000, 10


class Timed(SimCompute):
    """Accepts every offer, runs it DURATION seconds, and notes when each job started."""

    started: dict[str, float]
    tasks: set[asyncio.Task[None]]


async def run_for_a_while(node: SimCompute, offer: Offer) -> None:
    assert isinstance(node, Timed)
    node.started.setdefault(offer.job_id, time.monotonic())
    task = asyncio.create_task(_run(node, offer))
    node.tasks.add(task)
    task.add_done_callback(node.tasks.discard)


async def _run(node: SimCompute, offer: Offer) -> None:
    await node.update(offer.exec_id, offer.job_id, ES.RUNNING)
    await asyncio.sleep(DURATION)  # the simulated work itself
    await node.update(offer.exec_id, offer.job_id, ES.COMPLETED)


async def test_a_light_user_is_served_before_a_heavy_users_backlog(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    """A submits 1,000 one-CPU jobs on 100 slots, then B submits 10. First come first
    served, B would wait for A's backlog (about 9 job lengths); fair share gives B the
    next slots that free, so each of B's jobs starts within about one job length (a
    bound of 3 is asserted) and while most of A's backlog still waits."""
    cfg = config(nats_server.url, tmp_path / "req", scheduler_interval=1.0)
    async with RunningRequester(cfg) as req:
        nodes: list[Timed] = []
        for i in range(NODES):
            node = await compute(req, nc, f"sim-{i}", cpu=CPUS, kind=Timed)
            node.started, node.tasks, node.on_accept = {}, set(), run_for_a_while
            nodes.append(node)

        def started() -> dict[str, float]:
            return {job: t for node in nodes for job, t in node.started.items()}

        try:
            a_jobs = await _submit_many(req, "alice", A_JOBS)
            await wait_for(lambda: len(started()) >= NODES * CPUS, what="the slots full")
            b_submitted = time.monotonic()
            b_jobs = await _submit_many(req, "bob", B_JOBS)
            await wait_for(
                lambda: all(j in started() for j in b_jobs), timeout=30, what="bob's jobs started"
            )
            seen = started()
            a_waiting = sum(1 for j in a_jobs if j not in seen)
            waits = sorted(seen[j] - b_submitted for j in b_jobs)
            fifo_wait = a_waiting / (NODES * CPUS) * DURATION
            assert a_waiting >= A_JOBS // 2, f"A's backlog nearly done first ({a_waiting} left)"
            assert waits[-1] <= 3 * DURATION, (
                f"bob waited {waits[-1]:.2f}s (FIFO: {fifo_wait:.1f}s)"
            )
        finally:
            for node in nodes:
                for task in list(node.tasks):
                    task.cancel()


async def _submit_many(req: Requester, owner: str, count: int) -> list[str]:
    sem = asyncio.Semaphore(32)

    async def one() -> str:
        async with sem:
            return await submit_as(req, owner, spec(cpu=1.0))

    return list(await asyncio.gather(*(one() for _ in range(count))))


# -- two requesters ----------------------------------------------------------------------
async def test_the_queue_and_usage_are_the_leaders_and_outlive_it(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    """A requester that does not lead answers `job list --queued` with the leader's
    queue; when the leader goes, the next one rebuilds each owner's usage from the
    execution records, so fair share does not start from nothing."""
    first = RunningRequester(config(nats_server.url, tmp_path / "r1", name="req-1"))
    leader = await first.__aenter__()
    try:
        async with RunningRequester(
            config(nats_server.url, tmp_path / "r2", name="req-2")
        ) as other:
            assert leader.leadership is not None and leader.leadership.is_leader
            await compute(leader, nc, "one-cpu", cpu=1.0)
            busy = await submit_as(leader, "alice", spec(cpu=1.0))
            await wait_for(lambda: accepted(leader, busy), what="alice's job placed")
            waiting = await submit_as(other, "bob", spec(cpu=1.0))
            await wait_for(lambda: leader.jobs and leader.jobs.get(waiting), what="job seen")
            await state(leader, waiting, JobState.QUEUED)
            assert other.job_api is not None
            everyone = JobListRequest(queued=True, everyone=True)
            data = await other.job_api.list_jobs(codec.encode(everyone))
            assert isinstance(data, bytes)  # the leader's reply, passed on
            [listed] = codec.decode(data, JobListReply).jobs
            assert (listed.job_id, listed.position, listed.owner) == (waiting, 1, "bob")
            # A submit to either requester checks bob's waiting jobs against his quota.
            assert other.jobs is not None and other.jobs.owners.waiting("bob") == 1
            used = leader.jobs.owners.share.usage("alice")  # type: ignore[union-attr]
            assert used > 0
            await first.__aexit__(None, None, None)
            await wait_for(
                lambda: other.duties is not None and other.duties.active, what="req-2 leads"
            )
            share = other.jobs.owners.share  # type: ignore[union-attr]
            assert share is not None and share.usage("alice") >= used
            assert share.held("alice").cpu == 1.0  # alice's execution still holds its CPU
    finally:
        if leader.status != "closed":
            await first.__aexit__(None, None, None)
