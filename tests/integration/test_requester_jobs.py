"""The requester's job side against a real nats-server and simulated compute nodes:
placement, queueing, retries, lost nodes, stop, restarts and hostile updates."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from hivectl.core import codec
from hivectl.core.api import NodeApproveRequest, NodeRejectRequest
from hivectl.core.bus import RemoteError, request
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import (
    ExecState,
    ExecUpdate,
    Execution,
    Job,
    JobEvent,
    JobGetReply,
    JobGetRequest,
    JobListReply,
    JobListRequest,
    JobSpec,
    JobState,
    JobStopRequest,
    JobSubmitReply,
    JobSubmitRequest,
    JobType,
    Offer,
    ResourceRequest,
)
from hivectl.core.models import Health, OkReply, Resources
from hivectl.core.subjects import Subjects
from requester.service import Requester
from requester.store import StoreUnavailable
from tests.support.cluster import RunningRequester, requester_config, wait_for
from tests.support.simcompute import Policy, SimCompute, accept_all, reject_all
from tests.support.simnode import sample_info

S = Subjects()
ES = ExecState


def config(url: str, data_dir: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "unhealthy_after": 30.0,
        "disconnected_after": 60.0,
        "scheduler_interval": 0.1,
        "offer_timeout": 0.5,
    }
    values.update(overrides)
    return requester_config(url, data_dir, **values)


@pytest.fixture
async def requester(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Requester]:
    async with RunningRequester(config(nats_server.url, tmp_path / "req")) as req:
        yield req


async def call(nc: Client, verb: str, message: Any, reply: type) -> Any:
    return await request(nc, S.api("job", verb), message, reply, timeout=5)


async def node_api(nc: Client, verb: str, message: Any) -> None:
    await request(nc, S.api("node", verb), message, OkReply, timeout=5)


async def compute(
    req: Requester,
    nc: Client,
    node_id: str,
    *,
    approve: bool = True,
    cpu: float = 4.0,
    labels: dict[str, str] | None = None,
    policy: Policy = accept_all,
    kind: type[SimCompute] = SimCompute,
) -> SimCompute:
    """A registered, serving, heartbeating sim node (approved unless told otherwise)."""
    node = kind(nc, node_id, policy=policy)
    total = Resources(cpu=cpu, memory=8 * 2**30, disk=100 * 2**30)
    node.info = sample_info(labels).model_copy(update={"total": total, "allocatable": total})
    await node.register()
    await node.serve()
    if approve:
        await node_api(nc, "approve", NodeApproveRequest(id=node_id))
    await node.heartbeat()
    await wait_for(lambda: req.liveness.health(node_id) is Health.HEALTHY, what=f"{node_id} up")
    return node


def spec(**fields: Any) -> JobSpec:
    values: dict[str, Any] = {"image": "busybox", "command": ["echo", "hi"]}
    values["resources"] = ResourceRequest(cpu=fields.pop("cpu", 1.0), memory="512MiB")
    values.update(fields)
    return JobSpec(**values)


async def submit(nc: Client, job_spec: JobSpec) -> str:
    reply = await call(nc, "submit", JobSubmitRequest(spec=job_spec), JobSubmitReply)
    return str(reply.job_id)


def job_of(req: Requester, job_id: str) -> Job:
    assert req.jobs is not None
    job = req.jobs.get(job_id)
    assert job is not None
    return job


async def state(req: Requester, job_id: str, wanted: JobState, *, timeout: float = 5.0) -> Job:
    await wait_for(
        lambda: job_of(req, job_id).state is wanted, timeout=timeout, what=f"job {wanted}"
    )
    return job_of(req, job_id)


async def execution(
    req: Requester, job_id: str, check: Callable[[Execution], bool], what: str
) -> Execution:
    def find() -> Execution | None:
        return next((e for e in job_of(req, job_id).executions if check(e)), None)

    return await wait_for(find, what=what)


async def test_job_runs_on_the_only_fitting_node_and_completes(
    requester: Requester, nc: Client
) -> None:
    small = await compute(requester, nc, "small", cpu=1.0)
    big = await compute(requester, nc, "big", cpu=4.0)
    pending = await compute(requester, nc, "pending", approve=False, cpu=16.0)
    rejected = await compute(requester, nc, "rejected", approve=False, cpu=16.0)
    await node_api(nc, "reject", NodeRejectRequest(id="rejected", reason="no"))
    job_id = await submit(nc, spec(cpu=2.0))
    placed = await execution(requester, job_id, lambda e: e.state is ES.ACCEPTED, "accepted")
    assert placed.node_id == "big"
    assert (len(small.offers), len(pending.offers), len(rejected.offers)) == (0, 0, 0)
    for step in (ES.ACCEPTED, ES.STARTING, ES.RUNNING):  # what an agent reports, in order
        await big.update(placed.exec_id, job_id, step)
    await state(requester, job_id, JobState.RUNNING)
    await big.update(placed.exec_id, job_id, ES.COMPLETED, exit_code=0)
    job = await state(requester, job_id, JobState.COMPLETED)
    assert requester.exec_consumer is not None and not requester.exec_consumer.rejected
    done = job.executions[0]
    assert done.exit_code == 0 and done.started_at and done.ended_at
    got = await call(nc, "get", JobGetRequest(id=job_id[:8]), JobGetReply)
    assert got.job.state is JobState.COMPLETED
    listed = await call(nc, "list", JobListRequest(state=JobState.COMPLETED), JobListReply)
    assert [j.job_id for j in listed.jobs] == [job_id]
    events = await _events(nc, job_id)
    assert [(e.old, e.new) for e in events] == [
        ("", "PENDING"),
        ("PENDING", "RUNNING"),
        ("RUNNING", "COMPLETED"),
    ]


async def _events(nc: Client, job_id: str) -> list[JobEvent]:
    sub = await nc.jetstream().subscribe(S.job_events(job_id), ordered_consumer=True)
    events: list[JobEvent] = []
    with contextlib.suppress(Exception):
        while True:
            msg = await sub.next_msg(timeout=0.5)
            events.append(codec.decode(msg.data, JobEvent))
    await sub.unsubscribe()
    return events


async def test_too_big_a_job_queues_with_a_reason_then_fails_at_queue_timeout(
    requester: Requester, nc: Client
) -> None:
    await compute(requester, nc, "node-a", cpu=4.0)
    await compute(requester, nc, "node-b", cpu=2.0)
    job_id = await submit(nc, spec(cpu=64.0, queue_timeout=1.0))
    queued = await state(requester, job_id, JobState.QUEUED)
    assert queued.reason == "2 nodes, none with 64 CPUs free (most free: 4 CPUs)"
    failed = await state(requester, job_id, JobState.FAILED, timeout=5)
    assert failed.reason == f"queue timeout (1s): {queued.reason}"


async def test_a_constraint_that_matches_nothing_says_so(requester: Requester, nc: Client) -> None:
    await compute(requester, nc, "node-a", labels={"zone": "earth"})
    job_id = await submit(nc, spec(constraints=["zone=mars"]))
    queued = await state(requester, job_id, JobState.QUEUED)
    assert queued.reason == "no node matches zone=mars"
    other = await submit(nc, spec(constraints=["zone=earth"]))
    await execution(requester, other, lambda e: e.state is ES.ACCEPTED, "placed on earth")


async def test_an_offer_rejected_by_one_node_goes_to_the_next(
    requester: Requester, nc: Client
) -> None:
    full = await compute(requester, nc, "node-a", cpu=8.0, policy=reject_all)
    await compute(requester, nc, "node-b", cpu=2.0)
    job_id = await submit(nc, spec())
    placed = await execution(requester, job_id, lambda e: e.state is ES.ACCEPTED, "accepted")
    assert placed.node_id == "node-b" and len(full.offers) == 1
    declined = [e for e in job_of(requester, job_id).executions if e.state is ES.REJECTED]
    assert [(e.node_id, e.error) for e in declined] == [("node-a", "node is full")]


async def test_a_failed_execution_is_retried_on_another_node(
    requester: Requester, nc: Client
) -> None:
    nodes = {n: await compute(requester, nc, n) for n in ("node-a", "node-b")}
    job_id = await submit(nc, spec(retries=1))
    first = await execution(requester, job_id, lambda e: e.state is ES.ACCEPTED, "first")
    await nodes[first.node_id].update(first.exec_id, job_id, ES.FAILED, exit_code=3, error="boom")
    second = await execution(
        requester, job_id, lambda e: e.attempt == 1 and e.state is ES.ACCEPTED, "retry"
    )
    assert second.node_id != first.node_id
    # The same failure delivered again must not place a third execution.
    await nodes[first.node_id].update(first.exec_id, job_id, ES.FAILED, exit_code=3, error="boom")
    consumer = requester.exec_consumer
    assert consumer is not None
    await wait_for(lambda: consumer.received >= 2, what="duplicate applied")
    await nodes[second.node_id].update(second.exec_id, job_id, ES.COMPLETED, exit_code=0)
    job = await state(requester, job_id, JobState.COMPLETED)
    assert len(job.executions) == 2
    assert sum(len(n.offers) for n in nodes.values()) == 2


async def test_a_failure_without_retries_fails_the_job(requester: Requester, nc: Client) -> None:
    node = await compute(requester, nc, "node-a")
    job_id = await submit(nc, spec())
    placed = await execution(requester, job_id, lambda e: e.state is ES.ACCEPTED, "accepted")
    await node.update(placed.exec_id, job_id, ES.FAILED, exit_code=3, error="boom")
    job = await state(requester, job_id, JobState.FAILED)
    assert job.reason == f"execution {placed.exec_id} on node-a failed: boom (exit 3)"


async def test_work_its_node_stopped_goes_elsewhere_without_using_a_retry(
    requester: Requester, nc: Client
) -> None:
    """A node shutting down (a restart, an upgrade) stops its work: nothing was wrong
    with the work, so it is placed again and the job's retries (none here) stay."""
    nodes = {n: await compute(requester, nc, n) for n in ("node-a", "node-b")}
    job_id = await submit(nc, spec())
    first = await execution(requester, job_id, lambda e: e.state is ES.ACCEPTED, "first")
    await nodes[first.node_id].update(
        first.exec_id, job_id, ES.CANCELLED, exit_code=143, error="agent shutting down"
    )
    second = await execution(
        requester, job_id, lambda e: e.exec_id != first.exec_id and e.state is ES.ACCEPTED, "again"
    )
    stopped = next(e for e in job_of(requester, job_id).executions if e.exec_id == first.exec_id)
    assert (stopped.state, stopped.error) == (
        ES.CANCELLED,
        "stopped by its node: agent shutting down",
    )
    assert second.attempt == 0  # not a retry
    await nodes[second.node_id].update(second.exec_id, job_id, ES.COMPLETED, exit_code=0)
    await state(requester, job_id, JobState.COMPLETED)
    # The node stopped that work itself: nobody tells it to cancel what it already has.
    assert [c.exec_id for n in nodes.values() for c in n.cancels] == []


async def test_the_queue_timeout_counts_from_when_its_node_stopped_the_work(
    requester: Requester, nc: Client
) -> None:
    node = await compute(requester, nc, "node-a", cpu=1.0)
    job_id = await submit(nc, spec(queue_timeout=1.0))
    first = await execution(requester, job_id, lambda e: e.state is ES.ACCEPTED, "placed")
    await asyncio.sleep(1.2)  # the job now runs for longer than its queue timeout
    node.policy = lambda offer: (False, "agent shutting down")  # it declines from now on
    await node.update(first.exec_id, job_id, ES.CANCELLED, exit_code=143, error="shutting down")
    queued = await state(requester, job_id, JobState.QUEUED)
    assert queued.reason  # waiting, saying why: not failed at once
    failed = await state(requester, job_id, JobState.FAILED, timeout=10)
    assert failed.reason.startswith("queue timeout (1s)")


async def test_finished_jobs_are_deleted_after_their_retention_and_running_ones_kept(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    settings = config(nats_server.url, tmp_path / "req", job_retention=1.0)
    async with RunningRequester(settings) as req:
        node = await compute(req, nc, "node-a")
        done, running = await submit(nc, spec()), await submit(nc, spec())
        placed = await execution(req, done, lambda e: e.state is ES.ACCEPTED, "placed")
        await execution(req, running, lambda e: e.state is ES.ACCEPTED, "placed")
        await node.update(placed.exec_id, done, ES.COMPLETED, exit_code=0)
        await state(req, done, JobState.COMPLETED)
        assert req.jobs is not None
        await wait_for(lambda: req.jobs.get(done) is None, timeout=10, what="finished job gone")
        with pytest.raises(RemoteError, match="not found"):
            await call(nc, "get", JobGetRequest(id=done), JobGetReply)
        assert job_of(req, running).state is not JobState.COMPLETED
    async with RunningRequester(settings) as again:  # gone from the bucket, not just memory
        assert again.jobs is not None and again.jobs.get(done) is None
        assert again.jobs.get(running) is not None


class Heartbeats:
    """Keeps chosen sim nodes HEALTHY until they are dropped from it."""

    def __init__(self, *nodes: SimCompute) -> None:
        self.nodes = set(nodes)
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            for node in list(self.nodes):
                await node.heartbeat()
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> Heartbeats:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_a_lost_node_loses_its_execution_which_is_replaced_and_later_cancelled(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    cfg = config(nats_server.url, tmp_path / "req", unhealthy_after=0.3, disconnected_after=0.6)
    async with RunningRequester(cfg) as req:
        a = await compute(req, nc, "node-a", cpu=8.0)
        b = await compute(req, nc, "node-b", cpu=2.0)
        async with Heartbeats(a, b) as beats:
            job_id = await submit(nc, spec(retries=1))
            first = await execution(req, job_id, lambda e: e.state is ES.ACCEPTED, "on a")
            assert first.node_id == "node-a"
            await a.update(first.exec_id, job_id, ES.RUNNING)
            await state(req, job_id, JobState.RUNNING)
            beats.nodes.discard(a)
            await execution(req, job_id, lambda e: e.state is ES.LOST, "lost")
            second = await execution(req, job_id, lambda e: e.state is ES.ACCEPTED, "replaced on b")
            assert second.node_id == "node-b" and second.attempt == 1
            assert job_of(req, job_id).state is JobState.RUNNING  # it ran, and runs again
            beats.nodes.add(a)
            await wait_for(lambda: [c.exec_id for c in a.cancels] == [first.exec_id])


async def test_stop_cancels_on_the_node_and_stops_the_job(requester: Requester, nc: Client) -> None:
    node = await compute(requester, nc, "node-a")
    job_id = await submit(nc, spec())
    placed = await execution(requester, job_id, lambda e: e.state is ES.ACCEPTED, "accepted")
    await node.update(placed.exec_id, job_id, ES.RUNNING)
    await state(requester, job_id, JobState.RUNNING)
    stop = JobStopRequest(id=job_id, reason="enough")
    assert isinstance(await call(nc, "stop", stop, OkReply), OkReply)
    job = await state(requester, job_id, JobState.STOPPED)
    assert job.reason == "enough" and job.executions[0].state is ES.CANCELLED
    await wait_for(lambda: [c.exec_id for c in node.cancels] == [placed.exec_id])
    assert isinstance(await call(nc, "stop", stop, OkReply), OkReply)  # again: no-op


async def test_an_update_sent_while_the_requester_is_down_completes_the_job(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    cfg = config(nats_server.url, tmp_path / "req")
    async with RunningRequester(cfg) as req:
        node = await compute(req, nc, "node-a")
        job_id = await submit(nc, spec())
        placed = await execution(req, job_id, lambda e: e.state is ES.ACCEPTED, "accepted")
        await node.update(placed.exec_id, job_id, ES.RUNNING)
        await state(req, job_id, JobState.RUNNING)
    await node.update(placed.exec_id, job_id, ES.COMPLETED, exit_code=0)
    async with RunningRequester(cfg) as again:
        job = await state(again, job_id, JobState.COMPLETED)
        assert len(job.executions) == 1
        assert len(node.offers) == 1


async def test_duplicate_and_forged_updates_change_nothing(
    requester: Requester, nc: Client
) -> None:
    a = await compute(requester, nc, "node-a", cpu=8.0)
    b = await compute(requester, nc, "node-b", cpu=2.0)
    job_id = await submit(nc, spec())
    placed = await execution(requester, job_id, lambda e: e.state is ES.ACCEPTED, "accepted")
    await a.update(placed.exec_id, job_id, ES.RUNNING)
    running = await state(requester, job_id, JobState.RUNNING)
    consumer = requester.exec_consumer
    assert consumer is not None
    await a.update(placed.exec_id, job_id, ES.RUNNING)  # a resend with a new seq
    await a.update(placed.exec_id, job_id, ES.RUNNING, seq=2)  # same Msg-Id: stored once
    await wait_for(lambda: consumer.received == 2, what="resend applied")
    # B reports A's execution; B's key on A's subject; A's key speaking for B.
    await b.update(placed.exec_id, job_id, ES.COMPLETED)
    forged = ExecUpdate(
        node_id="node-a", seq=9, exec_id=placed.exec_id, job_id=job_id, state=ES.COMPLETED
    )
    js = nc.jetstream()
    await js.publish(S.node_exec("node-a"), b.sealed(forged))
    speaks_for_b = forged.model_copy(update={"node_id": "node-b"})
    await js.publish(S.node_exec("node-a"), a.sealed(speaks_for_b))
    await wait_for(lambda: sum(consumer.rejected.values()) == 3, what="forgeries dropped")
    assert consumer.rejected == {"not_your_exec": 1, "unauthenticated": 1, "id_mismatch": 1}
    assert consumer.received == 2  # the stream stored the same Msg-Id once
    assert job_of(requester, job_id) == running
    assert len(a.offers) == 1 and not b.offers


async def test_an_ops_job_runs_once_on_every_matching_node(
    requester: Requester, nc: Client
) -> None:
    nodes = [
        await compute(requester, nc, f"node-{i}", labels={"role": "edge" if i < 2 else "core"})
        for i in range(3)
    ]
    job_id = await submit(nc, spec(type=JobType.OPS, constraints=["role=edge"]))
    await wait_for(
        lambda: (
            sorted(e.node_id for e in job_of(requester, job_id).executions) == ["node-0", "node-1"]
        )
    )
    # Stored OFFERED before it is sent: wait for the offers to reach the nodes.
    await wait_for(lambda: all(n.offers for n in nodes[:2]), what="offers at both edge nodes")
    for node in nodes[:2]:
        offer = node.offers[0]
        await node.update(offer.exec_id, job_id, ES.COMPLETED, exit_code=0)
    await state(requester, job_id, JobState.COMPLETED)
    assert not nodes[2].offers


async def test_an_invalid_spec_is_refused_with_the_field(requester: Requester, nc: Client) -> None:
    body = codec.unpack(codec.encode(JobSubmitRequest(spec=spec())))
    body["spec"]["resources"]["cpu"] = -1
    reply = await nc.request(S.api("job", "submit"), codec.pack(body), timeout=5)
    answer = codec.decode(reply.data)
    assert answer.kind == "error"
    assert answer.code == "invalid" and "spec.resources.cpu" in answer.reason  # type: ignore[attr-defined]


async def test_jobs_submitted_together_never_overcommit_a_node(
    requester: Requester, nc: Client
) -> None:
    nodes = [await compute(requester, nc, f"node-{i}", cpu=2.0) for i in range(3)]
    ids = await asyncio.gather(*(submit(nc, spec(cpu=1.0)) for _ in range(10)))

    def accepted() -> list[Execution]:
        return [e for i in ids for e in job_of(requester, i).executions if e.state is ES.ACCEPTED]

    await wait_for(lambda: len(accepted()) == 6, what="six executions placed")
    await wait_for(
        lambda: sum(job_of(requester, i).state is JobState.QUEUED for i in ids) == 4,
        what="the other four queued",
    )
    # The sim nodes accept whatever they are offered: only the requester keeps count.
    assert [len(n.offers) for n in nodes] == [2, 2, 2]
    assert len(accepted()) == 6


async def test_jobs_asking_for_nothing_spread_over_the_nodes(
    requester: Requester, nc: Client
) -> None:
    nodes = [await compute(requester, nc, f"node-{i}") for i in range(4)]
    nothing = ResourceRequest(cpu=0.0, memory=0)
    ids = await asyncio.gather(*(submit(nc, spec(resources=nothing, count=2)) for _ in range(4)))
    await wait_for(
        lambda: all(
            sum(e.state is ES.ACCEPTED for e in job_of(requester, i).executions) == 2 for i in ids
        ),
        what="every execution placed",
    )
    assert [len(n.offers) for n in nodes] == [2, 2, 2, 2]


class GatedCompute(SimCompute):
    """Answers offers only once the test opens its gate."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()

    async def _on_offer(self, msg: Msg) -> None:
        await self.gate.wait()
        await super()._on_offer(msg)


async def test_room_a_node_declines_goes_to_a_job_that_waited_for_it(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    # No tick for 30s: only the declined offer itself can send the waiting job on.
    cfg = config(nats_server.url, tmp_path / "req", scheduler_interval=30.0, offer_timeout=5.0)
    async with RunningRequester(cfg) as req:
        declined: set[str] = set()

        def policy(offer: Offer) -> tuple[bool, str]:
            return (False, "changed my mind") if offer.job_id in declined else (True, "")

        node = await compute(req, nc, "node-a", cpu=1.0, policy=policy, kind=GatedCompute)
        assert isinstance(node, GatedCompute)
        first = await submit(nc, spec(cpu=1.0))
        declined.add(first)
        await execution(req, first, lambda e: e.state is ES.OFFERED, "first offer in flight")
        second = await submit(nc, spec(cpu=1.0))
        waiting = await state(req, second, JobState.QUEUED)
        assert waiting.reason == "the only node has 0 CPUs free, not 1 CPU"
        node.gate.set()
        placed = await execution(req, second, lambda e: e.state is ES.ACCEPTED, "second placed")
        assert placed.node_id == "node-a"
        refused = await state(req, first, JobState.QUEUED)
        assert refused.reason == "every fitting node declined (node-a: changed my mind)"


class MuteCompute(SimCompute):
    """Takes (or drops, with `drop`) the first offer without a word back: its answer is
    lost, as on a network that fails at the worst moment."""

    def __init__(self, *args: Any, drop: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drop = drop
        self.muted = 0

    async def _on_offer(self, msg: Msg) -> None:
        if self.muted:
            await super()._on_offer(msg)
            return
        self.muted += 1
        offer = self._open(msg, Offer)
        assert offer is not None
        self.offers.append(offer)
        if not self.drop:
            self.accepted.append(offer)  # taken: it runs here, the requester never hears


@pytest.mark.parametrize("taken", [True, False])
async def test_an_offer_whose_answer_is_lost_is_withdrawn_not_written_off(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path, taken: bool
) -> None:
    """Written off, a taken offer would run twice; withdrawn, the node says which it is."""
    cfg = config(nats_server.url, tmp_path / "req", offer_timeout=0.5)
    async with RunningRequester(cfg) as req:
        node = MuteCompute(nc, "node-a", drop=not taken)
        total = Resources(cpu=4.0, memory=8 * 2**30, disk=100 * 2**30)
        node.info = sample_info(None).model_copy(update={"total": total, "allocatable": total})
        await node.register()
        await node.serve()
        await node_api(nc, "approve", NodeApproveRequest(id="node-a"))
        await node.heartbeat()
        job_id = await submit(nc, spec())
        if taken:
            first = await execution(req, job_id, lambda e: e.state is ES.ACCEPTED, "taken")
            await node.update(first.exec_id, job_id, ES.COMPLETED, exit_code=0)
            done = await state(req, job_id, JobState.COMPLETED)
            assert [e.state for e in done.executions] == [ES.COMPLETED]  # ran once
            assert len(node.offers) == 1
        else:
            await wait_for(lambda: len(node.accepted) == 1, what="the offer sent again")
            job = req.jobs.get(job_id) if req.jobs else None
            assert job is not None
            assert [e.state for e in job.executions][:1] == [ES.REJECTED]
            assert job.executions[0].error == "withdrawn before this node took it"
        assert [w.exec_id for w in node.withdrawals] == [node.offers[0].exec_id]


async def test_an_update_the_store_could_not_take_keeps_the_consumer_from_caught_up(
    requester: Requester, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconciliation writes off work a node no longer holds only once the exec consumer
    has applied everything stored: an update nak'd after a failed write (a stream electing
    a leader, as on a NATS cluster) must hold "caught up" back until it is applied, or the
    work it ended is placed again and runs twice (seen in the cluster test)."""
    node = await compute(requester, nc, "node-a")
    job_id = await submit(nc, spec())
    placed = await execution(requester, job_id, lambda e: e.state is ES.ACCEPTED, "accepted")
    consumer = requester.exec_consumer
    assert consumer is not None
    store = consumer._store  # the fault below is injected into the real store
    real, failures = store.change, []

    async def change(job: str, edit: Any) -> Any:
        if len(failures) < 2:  # two in a row: the update is out for 2s, fetches meanwhile
            failures.append(time.monotonic())  # find nothing
            raise StoreUnavailable("hive_jobs", 4.0, None)
        return await real(job, edit)

    monkeypatch.setattr(store, "change", change)
    await node.update(placed.exec_id, job_id, ES.COMPLETED, exit_code=0)
    samples: list[float] = []

    def done() -> bool:
        samples.append(consumer.caught_up_at)
        return job_of(requester, job_id).state is JobState.COMPLETED

    await wait_for(done, timeout=10, what="the update applied at last")
    assert len(failures) == 2
    assert max(samples[:-1]) < failures[0], "caught up while an update was still out"
    applied = time.monotonic()
    await wait_for(lambda: consumer.caught_up_at > failures[-1], what="caught up after")
    assert consumer.caught_up_at <= applied + 2
