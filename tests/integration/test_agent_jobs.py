"""A real NodeAgent takes sealed offers, runs process jobs and reports them through JetStream.

The test plays the requester with `FakeRequester` (membership) plus sealed offers and
cancels of its own; it reads updates back from HIVE_EXEC with the key it shares with
the node, as the real requester does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError

from hivectl.core.config import NatsSettings
from hivectl.core.daemon import Status
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import ExecState, JobSpec, Offer, OfferReply, new_exec_id, new_job_id
from hivectl.core.models import ErrorReply
from tests.integration.test_agent_membership import (
    NODE,
    FakeRequester,
    Running,
    make_config,
    requester,
    spawn,
    state_dir,
    until,
)
from tests.integration.test_executors import Jobs, create_streams, states
from tests.integration.test_executors import until as until_async
from tests.support.replycut import ReplyCut

__all__ = ["requester", "spawn", "state_dir"]  # fixtures, re-used from the membership tests

GRACE = 0.5


def process(*command: str, **values: Any) -> JobSpec:
    return JobSpec(engine="process", command=list(command), **values)


async def joined_agent(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running], **values: Any
) -> tuple[Running, Jobs]:
    """An agent with the process executor, joined; and a `Jobs` holding its key."""
    await create_streams(nc)
    executors = {"docker": {"enabled": False}, "process": {"enabled": True}}
    run = spawn(executors=executors, job_grace_period=GRACE, **values)
    await until(lambda: run.agent.executions is not None and run.agent.executions.taking_offers)
    assert run.agent.local is not None
    key = requester.identity.message_key(run.agent.local.identity.public_key)
    return run, Jobs(nc, key=key)


async def test_offer_runs_a_job_and_reports_sealed_updates(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run, jobs = await joined_agent(nc, requester, spawn)
    offer, reply = await jobs.offer(process("sh", "-c", "echo hi"))
    assert reply == OfferReply(exec_id=offer.exec_id, accepted=True)
    updates = await jobs.final(offer.exec_id)  # opened with the shared key, Msg-Id checked
    assert states(updates) == ["ACCEPTED", "STARTING", "RUNNING", "COMPLETED"]
    assert all(u.node_id == NODE and u.job_id == offer.job_id for u in updates)
    assert (await jobs.logs(offer))[0] == ("stdout", b"hi\n")
    # A repeated offer is accepted again and runs nothing.
    _, again = await jobs.offer(offer.spec, exec_id=offer.exec_id)
    assert isinstance(again, OfferReply) and again.accepted
    assert run.agent.executions is not None and run.agent.executions.runs == {}
    assert states(await jobs.updates(offer.exec_id))[-1] == ExecState.COMPLETED
    # Capacity is back to full, and so is the reported availability.
    ledger = run.agent.ledger
    assert ledger is not None and ledger.available == ledger.allocatable
    seen = len(requester.resources)
    await until(lambda: len(requester.resources) > seen)
    assert requester.resources[-1].resources.available.cpu == ledger.allocatable.cpu


async def test_resources_report_subtracts_locks(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    _run, jobs = await joined_agent(nc, requester, spawn)
    offer, _ = await jobs.offer(process("sleep", "30", resources={"cpu": 0.5}))
    await until_async(lambda: _has(jobs, offer.exec_id, "RUNNING"))
    seen = len(requester.resources)
    await until(lambda: len(requester.resources) > seen)
    report = requester.resources[-1].resources
    assert report.available.cpu == pytest.approx(report.allocatable.cpu - 0.5)
    await jobs.cancel(offer.exec_id)
    await jobs.final(offer.exec_id)


async def _has(jobs: Jobs, exec_id: str, state: str) -> bool:
    return state in states(await jobs.updates(exec_id))


async def test_offer_too_big_is_rejected(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run, jobs = await joined_agent(nc, requester, spawn)
    offer, reply = await jobs.offer(process("true", resources={"cpu": 1000}))
    assert isinstance(reply, OfferReply) and not reply.accepted
    assert reply.reason.startswith("needs 1000 CPU,") and reply.reason.endswith(" free")
    assert run.agent.executions is not None and run.agent.executions.runs == {}
    assert await jobs.updates(offer.exec_id) == []


async def test_forged_offer_gets_an_error(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run, jobs = await joined_agent(nc, requester, spawn)
    offer, reply = await jobs.offer(process("true"), key=bytes(32))
    assert isinstance(reply, ErrorReply) and reply.code == "unauthenticated"
    garbage = await nc.request(jobs_subject("offer"), b"\x00" * 40, timeout=5)
    assert garbage.data  # an answer, not a crash
    assert run.agent.executions is not None and run.agent.executions.runs == {}
    assert await jobs.updates(offer.exec_id) == []
    assert run.agent.status is Status.RUNNING


def jobs_subject(verb: str) -> str:
    return f"hive.compute.{NODE}.{verb}"


async def test_cancel_stops_a_running_job(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run, jobs = await joined_agent(nc, requester, spawn)
    offer, _ = await jobs.offer(process("sleep", "30"))
    await until_async(lambda: _has(jobs, offer.exec_id, "RUNNING"))
    await jobs.cancel(offer.exec_id, reason="operator stop")
    updates = await jobs.final(offer.exec_id)
    assert updates[-1].state == ExecState.CANCELLED and updates[-1].error == "operator stop"
    ledger = run.agent.ledger
    assert ledger is not None and offer.exec_id not in ledger


async def test_close_cancels_running_jobs_after_the_grace_period(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run, jobs = await joined_agent(nc, requester, spawn)
    offer, _ = await jobs.offer(process("sleep", "30"))
    await until_async(lambda: _has(jobs, offer.exec_id, "RUNNING"))
    started = time.monotonic()
    await run.stop()
    took = time.monotonic() - started
    assert GRACE <= took < GRACE + 5
    updates = await jobs.final(offer.exec_id)
    assert updates[-1].state == ExecState.CANCELLED
    assert updates[-1].error == "agent shutting down"
    assert run.agent.ledger is not None and run.agent.ledger.held == {}


async def test_removed_node_takes_no_offers(
    nc: Client, requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run, jobs = await joined_agent(nc, requester, spawn)
    requester.forget(NODE)
    await until(lambda: run.agent.membership is not None and run.agent.membership.removed)
    await until(lambda: run.agent.executions is not None and not run.agent.executions.taking_offers)
    with pytest.raises(NoRespondersError):
        await jobs.offer(process("true"), exec_id=new_exec_id())


async def test_a_log_chunk_sent_again_after_a_lost_ack_is_stored_once(
    nc: Client, nats_server: EmbeddedNats, requester: FakeRequester, state_dir: Path
) -> None:
    """The server stored the chunk, the connection broke before its ack came back: the
    agent sends it again once reconnected, and `job logs` must not show it twice."""
    await create_streams(nc)
    job_id, exec_id = new_job_id(), new_exec_id()
    with ReplyCut(nats_server.url.removeprefix("nats://"), f"hive.logs.{job_id}.{exec_id}") as cut:
        executors = {"docker": {"enabled": False}, "process": {"enabled": True}}
        cfg = make_config(state_dir, NatsSettings(url=cut.url), executors=executors)
        run = Running(cfg)
        try:
            await until(
                lambda: run.agent.executions is not None and run.agent.executions.taking_offers
            )
            assert run.agent.local is not None
            jobs = Jobs(nc, key=requester.identity.message_key(run.agent.local.identity.public_key))
            offer = Offer(
                node_id=NODE, exec_id=exec_id, job_id=job_id, spec=process("echo", "once")
            )
            reply = await jobs.request("offer", offer)
            assert isinstance(reply, OfferReply) and reply.accepted
            await jobs.final(exec_id)
        finally:
            await run.stop()
        assert cut.cut.is_set() and len(cut.requests) >= 2  # sent again
    assert await jobs.logs(offer) == [("stdout", b"once\n"), ("eof:0", b"")]
