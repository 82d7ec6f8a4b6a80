"""A node runs at most `max_executions` at once, and the requester stops offering it more.

Issue #15: a big batch on a couple of agents turned into offer storms. A node at its
limit now declines an offer at once, saying it is full, and advertises the limit so
the requester holds back its offers until an execution there ends.

First against the test playing the requester (sealed offers, as in test_agent_jobs),
then with a real requester placing a batch on one real process agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from hivectl.core.bus import request
from hivectl.core.config import NatsSettings, NodeAgentConfig
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import (
    ExecState,
    JobGetReply,
    JobGetRequest,
    JobSpec,
    JobSubmitReply,
    JobSubmitRequest,
    OfferReply,
)
from hivectl.core.subjects import Subjects
from nodeagent.service import NodeAgent
from requester.service import Requester
from tests.integration.test_agent_engines import describe
from tests.integration.test_agent_jobs import joined_agent, process
from tests.integration.test_agent_membership import (
    FakeRequester,
    Running,
    requester,
    spawn,
    state_dir,
)
from tests.integration.test_agent_membership import until as until_sync
from tests.integration.test_executors import until
from tests.support.cluster import RunningRequester, requester_config

__all__ = ["requester", "spawn", "state_dir"]  # fixtures, re-used from the membership tests

FULL = "node full: 2 of 2 executions running (max_executions)"


async def test_an_offer_beyond_max_executions_is_declined_as_full(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run, jobs = await joined_agent(nc, requester, spawn, max_executions=2)
    assert requester.registrations[-1].info.max_executions == 2  # advertised
    first, reply = await jobs.offer(process("sleep", "30"))
    assert isinstance(reply, OfferReply) and reply.accepted
    second, reply = await jobs.offer(process("sleep", "30"))
    assert isinstance(reply, OfferReply) and reply.accepted

    third, reply = await jobs.offer(process("sleep", "30"))
    assert reply == OfferReply(exec_id=third.exec_id, accepted=False, reason=FULL, full=True)
    assert await jobs.updates(third.exec_id) == []  # nothing ran
    _, again = await jobs.offer(first.spec, exec_id=first.exec_id)
    assert isinstance(again, OfferReply) and again.accepted  # a repeat is no new execution

    await jobs.cancel(first.exec_id)
    await jobs.final(first.exec_id)
    fourth, reply = await jobs.offer(process("sleep", "30"))
    assert isinstance(reply, OfferReply) and reply.accepted  # room again
    assert run.agent.executions is not None and run.agent.executions.rejected == 1
    for offer in (second, fourth):
        await jobs.cancel(offer.exec_id)


async def test_an_offer_too_big_for_what_is_left_is_declined_as_full(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run, jobs = await joined_agent(nc, requester, spawn)
    assert run.agent.ledger is not None
    cpu = run.agent.ledger.allocatable.cpu
    _, reply = await jobs.offer(process("true", resources={"cpu": cpu + 1}))
    assert isinstance(reply, OfferReply) and not reply.accepted and reply.full
    assert reply.reason == f"needs {cpu + 1:g} CPU, {cpu:g} free"


# -- with a real requester ---------------------------------------------------------------

NODE = "node-l"
API = Subjects()


@pytest.fixture
async def placing(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Requester]:
    config = requester_config(
        nats_server.url, tmp_path / "req", auto_approve=True, scheduler_interval=0.1
    )
    async with RunningRequester(config) as req:
        yield req


@pytest.fixture
async def limited_agent(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[NodeAgent]:
    cfg = NodeAgentConfig(
        name=NODE,
        state_dir=tmp_path / "agent",
        nats=NatsSettings(url=nats_server.url),
        heartbeat_interval=0.1,
        resource_update_interval=0.2,
        info_update_interval=0.2,
        max_executions=2,
        executors={"docker": {"enabled": False}, "process": {"enabled": True}},
    )
    agent = NodeAgent(cfg, request_timeout=2.0)
    task = asyncio.create_task(agent.serve())
    yield agent
    agent.stop()
    await asyncio.wait_for(task, 15)


async def test_a_batch_larger_than_the_limit_completes_without_an_offer_storm(
    nc: Client, nats_server: EmbeddedNats, placing: Requester, limited_agent: NodeAgent
) -> None:
    """Six executions, two at a time: the requester waits for room instead of offering
    on, so the node declines no more than a few offers per slot it frees (here none
    while the requester's count of what runs there is right)."""
    agent = limited_agent
    await until_sync(lambda: agent.executions is not None and agent.executions.taking_offers)
    spec = JobSpec(engine="process", command=["sleep", "0.5"], count=6)
    submitted = await request(
        nc, API.api("job", "submit"), JobSubmitRequest(spec=spec), JobSubmitReply, timeout=5
    )
    reasons: set[str] = set()
    most_running = 0

    async def completed() -> bool:
        nonlocal most_running
        assert agent.ledger is not None
        most_running = max(most_running, agent.ledger.running)
        got = await request(
            nc, API.api("job", "get"), JobGetRequest(id=submitted.job_id), JobGetReply, timeout=5
        )
        reasons.add(got.job.reason)
        return got.job.state.value == "COMPLETED"

    await until(completed, timeout=60)
    assert agent.executions is not None
    freed = 6 - 2
    assert agent.executions.rejected <= freed, "more than one offer declined per freed slot"
    assert agent.executions.accepted == 6
    assert most_running <= 2
    assert "the only node is at its max_executions" in reasons  # why the rest waited
    job = (
        await request(
            nc, API.api("job", "get"), JobGetRequest(id=submitted.job_id), JobGetReply, timeout=5
        )
    ).job
    states = [e.state for e in job.executions]
    assert states.count(ExecState.COMPLETED) == 6
    lines = await asyncio.to_thread(describe, nats_server, agent.cfg.state_dir.parent, NODE)
    assert "Max executions:  2" in lines
