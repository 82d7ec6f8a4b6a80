"""Followers place the jobs submitted to them while nothing waits (requester/jobs/assist.py):
two requesters on a real nats-server, simulated compute nodes that keep count of their
own room as a real agent does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.config import SchedulerSettings
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import ExecState, Job, JobState, JobStopRequest, Offer, new_job_id
from hivectl.core.quotas import Quota
from hivectl.core.users import ADMIN_USER
from requester.metrics import RequesterCollector
from requester.service import Requester
from tests.integration.test_fair_queue import add_user, set_quota, submit_as
from tests.integration.test_requester_jobs import compute, config, job_of, spec, state
from tests.support.cluster import RunningRequester, wait_for
from tests.support.simcompute import Policy

LIVE = (ExecState.OFFERED, ExecState.ACCEPTED, ExecState.RUNNING)


@pytest.fixture
async def pair(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[tuple[Requester, ...]]:
    """A leader, then a follower that has heard it lead."""
    url = nats_server.url
    async with RunningRequester(config(url, tmp_path / "r1", name="req-1")) as leader:
        await wait_for(lambda: leader.duties and leader.duties.active, what="req-1 leads")
        async with RunningRequester(config(url, tmp_path / "r2", name="req-2")) as follower:
            assert follower.presence is not None
            await wait_for(lambda: follower.presence.leader()[1] > 0, what="req-2 hears req-1")
            yield leader, follower


def room(cpu: float) -> Policy:
    """A node's answer as an agent's: accepted while what it took fits in `cpu`."""
    taken: list[float] = []

    def decide(offer: Offer) -> tuple[bool, str]:
        want = offer.spec.resources.cpu
        if sum(taken) + want > cpu + 1e-9:
            return False, "not enough CPU"
        taken.append(want)
        return True, ""

    return decide


def live(req: Requester, job_id: str) -> list[str]:
    """The nodes holding the job's live executions, as `req` has it (none yet: [])."""
    job = req.jobs.get(job_id) if req.jobs is not None else None
    return [e.node_id for e in job.executions if e.state in LIVE] if job else []


def metrics(req: Requester) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the requester's /metrics would say, by (sample name, labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in RequesterCollector(req).collect()
        for sample in family.samples
    }


def queued(req: Requester, job_id: str) -> bool:
    job = req.jobs.get(job_id) if req.jobs is not None else None
    return job is not None and job.state is JobState.QUEUED


async def test_a_job_submitted_to_a_follower_is_placed_by_it(
    pair: tuple[Requester, Requester], nc: Client
) -> None:
    leader, follower = pair
    await compute(leader, nc, "node-1", cpu=4.0, policy=room(4.0))
    assert leader.link is not None and follower.link is not None and follower.assist
    offers = leader.link.offers
    job_id = await submit_as(follower, ADMIN_USER, spec(cpu=1.0))
    await wait_for(lambda: live(leader, job_id) == ["node-1"], what="placed")
    assert job_of(leader, job_id).placer == "req-2"
    assert job_of(leader, job_id).executions[0].state is ExecState.ACCEPTED
    assert (follower.assist.placed, follower.assist.handed_over) == (1, 0)
    assert leader.link.offers == offers  # the leader sent none
    said = metrics(follower)
    assert said[("hive_follower_jobs_total", (("outcome", "placed"),))] == 1.0
    assert said[("hive_follower_jobs_total", (("outcome", "handed_over"),))] == 0.0
    # Placed, it is the leader's like any job: the node's updates finish it.
    assert leader.duties is not None and leader.duties.claims.taken_over == 0


async def test_while_a_job_waits_for_room_the_follower_leaves_new_jobs_to_the_leader(
    pair: tuple[Requester, Requester], nc: Client
) -> None:
    leader, follower = pair
    await compute(leader, nc, "node-1", cpu=1.0, policy=room(1.0))
    running = await submit_as(leader, ADMIN_USER, spec(cpu=1.0))
    await wait_for(lambda: live(leader, running), what="first job placed")
    waiting = await submit_as(leader, ADMIN_USER, spec(cpu=1.0))
    await state(leader, waiting, JobState.QUEUED)
    assert follower.jobs is not None
    await wait_for(lambda: follower.jobs.owners.queued() == 1, what="the follower sees it wait")
    after = await submit_as(follower, ADMIN_USER, spec(cpu=0.5))
    assert job_of(follower, after).placer == ""  # the leader's, in the queue's order
    await wait_for(lambda: queued(leader, after), what="the leader queues it")
    assert follower.assist is not None and follower.assist.placed == 0
    assert metrics(follower)[("hive_follower_jobs_left_total", (("why", "jobs_waiting"),))] == 1


async def test_a_job_whose_owner_has_a_quota_is_left_to_the_leader(
    pair: tuple[Requester, Requester], nc: Client
) -> None:
    leader, follower = pair
    await compute(leader, nc, "node-1", cpu=4.0, policy=room(4.0))
    await add_user(nc, "alice")
    await set_quota(nc, user="alice", cpu=2.0)
    await wait_for(lambda: follower.quotas.effective("alice") != Quota(), what="quota seen")
    job_id = await submit_as(follower, "alice", spec(cpu=1.0))
    assert job_of(follower, job_id).placer == ""
    await wait_for(lambda: live(leader, job_id) == ["node-1"], what="placed by the leader")
    assert follower.assist is not None and follower.assist.placed == 0


async def test_a_job_a_follower_took_and_never_placed_goes_to_the_leader_after_its_grace(
    pair: tuple[Requester, Requester], nc: Client
) -> None:
    """A follower killed between storing a job and offering it: the leader waits its
    grace (twice the offer timeout), then places the job itself."""
    leader, _ = pair
    await compute(leader, nc, "node-1", cpu=4.0, policy=room(4.0))
    assert leader.jobs is not None and leader.duties is not None
    grace = 2 * leader.config.offer_timeout
    job_id = new_job_id()
    stored = time.monotonic()
    await leader.jobs.create(Job(job_id=job_id, spec=spec(cpu=1.0), placer="req-gone"))
    await wait_for(lambda: live(leader, job_id), timeout=grace + 5, what="placed by the leader")
    assert time.monotonic() - stored >= grace * 0.9
    assert leader.duties.claims.taken_over == 1


async def test_two_requesters_place_each_job_once_and_never_past_a_nodes_room(
    pair: tuple[Requester, Requester], nc: Client
) -> None:
    """48 one-CPU jobs submitted to both requesters at once on 32 CPUs: 32 run, each
    job at most once, every node within its room, and 16 wait for the leader."""
    leader, follower = pair
    nodes = [await compute(leader, nc, f"node-{i}", cpu=8.0, policy=room(8.0)) for i in range(4)]
    owners = [leader, follower] * 24
    ids = await asyncio.gather(*(submit_as(r, ADMIN_USER, spec(cpu=1.0)) for r in owners))

    def settled() -> bool:
        placed = sum(1 for job_id in ids if live(leader, job_id))
        return placed == 32 and sum(queued(leader, job_id) for job_id in ids) == 16

    await wait_for(settled, timeout=15, what="32 placed and 16 queued")
    for job_id in ids:
        assert len(live(leader, job_id)) <= 1, job_of(leader, job_id)
    assert all(sum(o.spec.resources.cpu for o in n.accepted) <= 8.0 for n in nodes)
    assert sum(len(n.accepted) for n in nodes) == 32
    assert follower.assist is not None and follower.assist.placed > 0


async def test_a_job_stopped_through_a_follower_is_cancelled_on_its_node(
    pair: tuple[Requester, Requester], nc: Client
) -> None:
    """The follower's cancel carries the leader's epoch: a node that has seen that epoch
    takes it (one from epoch 0 it would refuse as stale)."""
    leader, follower = pair
    node = await compute(leader, nc, "node-1", cpu=4.0, policy=room(4.0))
    job_id = await submit_as(leader, ADMIN_USER, spec(cpu=1.0))
    await wait_for(lambda: live(follower, job_id), what="placed, as the follower sees it")
    assert follower.job_api is not None
    await follower.job_api.stop_job(codec.encode(JobStopRequest(id=job_id)))
    await wait_for(lambda: node.cancels, what="the node told to stop it")
    assert node.cancels[0].epoch == leader.duties.scheduler._store.epoch  # type: ignore[union-attr]


async def test_with_followers_place_off_only_the_leader_places(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    url, off = nats_server.url, SchedulerSettings(followers_place=False)
    async with RunningRequester(config(url, tmp_path / "r1", name="req-1")) as leader:
        await wait_for(lambda: leader.duties and leader.duties.active, what="req-1 leads")
        cfg = config(url, tmp_path / "r2", name="req-2", scheduler=off)
        async with RunningRequester(cfg) as follower:
            await compute(leader, nc, "node-1", cpu=4.0, policy=room(4.0))
            job_id = await submit_as(follower, ADMIN_USER, spec(cpu=1.0))
            assert follower.assist is None and job_of(follower, job_id).placer == ""
            await wait_for(lambda: live(leader, job_id) == ["node-1"], what="placed by req-1")
