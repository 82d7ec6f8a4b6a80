"""The node agent against a real nats-server, with the test playing the requester.

`FakeRequester` answers registrations and info updates with the real core code
(codec, auth, subjects) and checks every message the agent sends: signature on the
registration, MAC on everything after it, node id in subject and body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from hivectl.core import auth, codec
from hivectl.core.auth import Identity
from hivectl.core.config import NatsSettings, NodeAgentConfig
from hivectl.core.daemon import Status
from hivectl.core.models import (
    Approval,
    ErrorReply,
    Heartbeat,
    InfoReply,
    InfoUpdate,
    Leave,
    Message,
    RegisterReply,
    RegisterRequest,
    ResourceUpdate,
)
from hivectl.core.subjects import Subjects
from nodeagent.identity import read_sentinel
from nodeagent.service import NodeAgent

NODE = "node-1"
REMOVED = "was removed by an operator; run `hive-nodeagent register`"


class FakeRequester:
    """Just enough of a requester: binds id to key, answers, records what it received."""

    def __init__(self, nc: Client, prefix: str = "hive") -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.identity = Identity.generate()
        self.keys: dict[str, str] = {}  # node id -> public key (the node records)
        self.approval = Approval.PENDING
        self.info_error: str | None = None  # answer the next info update with this code
        self.registrations: list[RegisterRequest] = []
        self.infos: list[InfoUpdate] = []
        self.heartbeats: list[Heartbeat] = []
        self.resources: list[ResourceUpdate] = []
        self.leaves: list[Leave] = []
        self.bad: list[str] = []  # anything that failed a check

    async def start(self) -> FakeRequester:
        s = self.subjects
        await self.nc.subscribe(s.node_register, cb=self._on_register)
        await self.nc.subscribe(s.node_wildcard("info"), cb=self._on_info)
        for what in ("heartbeat", "resources", "leave"):
            await self.nc.subscribe(s.node_wildcard(what), cb=self._on_publish)
        await self.nc.flush()
        return self

    def forget(self, node_id: str) -> None:
        """What `hivectl node delete` does to the record."""
        self.keys.pop(node_id, None)

    async def _on_register(self, msg: Msg) -> None:
        request = codec.decode(auth.split_signed(msg.data), RegisterRequest)
        auth.open_signed(msg.data, request.public_key)  # raises on a bad signature
        bound = self.keys.setdefault(request.node_id, request.public_key)
        self.registrations.append(request)
        if bound != request.public_key:
            await self._reply(msg, ErrorReply(code="key_mismatch", reason="bound to another key"))
            return
        reply = RegisterReply(
            node_id=request.node_id,
            approval=self.approval,
            requester_key=self.identity.public_key,
            cluster="test",
        )
        await self._reply(msg, reply)

    async def _on_info(self, msg: Msg) -> None:
        node_id = self.subjects.node_id_from(msg.subject)
        if self.info_error is not None:
            code, self.info_error = self.info_error, None
            await self._reply(msg, ErrorReply(code=code, reason="test says no"))
            return
        update = self._open(node_id, msg.data, InfoUpdate)
        if update is None:
            await self._reply(msg, InfoReply(known=False))
            return
        self.infos.append(update)
        await self._reply(msg, InfoReply(known=True, approval=self.approval))

    async def _on_publish(self, msg: Msg) -> None:
        node_id = self.subjects.node_id_from(msg.subject)
        message = self._open(node_id, msg.data, (Heartbeat, ResourceUpdate, Leave))
        if isinstance(message, Heartbeat):
            self.heartbeats.append(message)
        elif isinstance(message, ResourceUpdate):
            self.resources.append(message)
        elif isinstance(message, Leave):
            self.leaves.append(message)

    def _open(self, node_id: str, data: bytes, expect: Any) -> Any:
        """The message, when the node is known and its MAC and body check out; else None."""
        if node_id not in self.keys:
            return None
        try:
            key = self.identity.message_key(self.keys[node_id])
            message: Any = codec.decode(auth.open_sealed(data, key), expect)
        except (auth.AuthError, codec.CodecError) as exc:
            self.bad.append(f"{node_id}: {exc}")
            return None
        if message.node_id != node_id:
            self.bad.append(f"{node_id}: body says {message.node_id}")
            return None
        return message

    async def _reply(self, msg: Msg, message: Message) -> None:
        await msg.respond(codec.encode(message))


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `check` until it holds, failing the test after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)  # polling state owned by the code under test


def make_config(state_dir: Path, nats: NatsSettings, **values: Any) -> NodeAgentConfig:
    settings: dict[str, Any] = {
        "name": NODE,
        "state_dir": state_dir,
        "nats": nats,
        "heartbeat_interval": 0.1,
        "resource_update_interval": 0.15,
        "info_update_interval": 0.2,
    }
    return NodeAgentConfig(**(settings | values))


class Running:
    """An agent serving in a background task, stopped (and awaited) by `stop()`."""

    def __init__(self, cfg: NodeAgentConfig) -> None:
        self.agent = NodeAgent(cfg, request_timeout=1.0)
        self.task = asyncio.create_task(self.agent.serve())

    async def stop(self) -> None:
        self.agent.stop()
        async with asyncio.timeout(10):
            await self.task


@pytest.fixture
async def requester(nc: Client) -> FakeRequester:
    return await FakeRequester(nc).start()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent"


@pytest.fixture
async def spawn(
    state_dir: Path, nats_settings: NatsSettings
) -> AsyncIterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(**values: Any) -> Running:
        run = Running(make_config(state_dir, nats_settings, **values))
        running.append(run)
        return run

    yield start
    for run in running:
        if not run.task.done():
            await run.stop()


async def test_registers_then_heartbeats_sealed_with_rising_seq(
    requester: FakeRequester, spawn: Callable[..., Running], state_dir: Path
) -> None:
    run = spawn(labels={"zone": "a"})
    await until(lambda: len(requester.heartbeats) >= 5 and len(requester.resources) >= 3)
    agent = run.agent
    assert agent.status is Status.RUNNING
    [request] = requester.registrations
    assert request.node_id == NODE and request.info.labels == {"zone": "a"}
    assert request.public_key == agent.local.identity.public_key  # type: ignore[union-attr]
    assert requester.bad == []
    for kind in (requester.heartbeats, requester.resources):
        seqs = [m.seq for m in kind]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    all_seqs = [m.seq for m in requester.heartbeats] + [m.seq for m in requester.resources]
    assert len(set(all_seqs)) == len(all_seqs)  # one counter for every kind
    report = requester.resources[-1].resources
    assert report.allocatable.fits(report.available)
    sentinel = read_sentinel(state_dir)
    assert sentinel is not None and sentinel.node_id == NODE
    assert sentinel.requester_key == requester.identity.public_key
    assert sentinel.cluster == "test"
    await until(lambda: len(requester.infos) >= 2)  # info updates keep coming
    assert agent.membership is not None and agent.membership.approval is Approval.PENDING


async def test_close_publishes_leave(
    requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run = spawn()
    await until(lambda: len(requester.heartbeats) >= 2)
    await run.stop()
    await until(lambda: len(requester.leaves) == 1)
    [leave] = requester.leaves
    assert leave.reason == "shutdown"
    assert leave.seq > max(m.seq for m in requester.heartbeats + requester.resources)
    assert run.agent.status is Status.CLOSED and run.agent.leaves_sent == 1
    assert run.agent.nc is None


async def test_removed_node_goes_quiet_logs_once_and_is_readmitted(
    requester: FakeRequester, spawn: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hive.nodeagent")
    run = spawn()
    agent = run.agent
    await until(lambda: len(requester.heartbeats) >= 2)
    membership = agent.membership
    assert membership is not None
    requester.forget(NODE)
    await until(lambda: membership.removed)
    infos = membership.info_updates_sent
    await until(lambda: membership.info_updates_sent >= infos + 1)  # none still in flight
    beats = agent.heartbeats_sent
    await until(lambda: membership.info_updates_sent >= infos + 4)
    assert agent.heartbeats_sent == beats  # no heartbeats while removed
    assert agent.status is Status.RUNNING
    assert sum(REMOVED in r.getMessage() for r in caplog.records) == 1
    # An operator runs `hive-nodeagent register` elsewhere: the record is back.
    requester.keys[NODE] = membership.local.identity.public_key
    await until(lambda: agent.heartbeats_sent > beats and not membership.removed)
    assert any("re-admitted" in r.getMessage() for r in caplog.records)
    assert len(requester.registrations) == 1  # the agent itself did not register again


async def test_restart_with_sentinel_rejoins_without_registering(
    requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    first = spawn()
    await until(lambda: len(requester.heartbeats) >= 2)
    await first.stop()
    await until(lambda: len(requester.leaves) == 1)
    last_seq = requester.leaves[0].seq
    seen = len(requester.heartbeats)
    second = spawn()
    await until(lambda: len(requester.heartbeats) >= seen + 2)
    assert len(requester.registrations) == 1
    assert second.agent.membership is not None and second.agent.membership.registrations == 0
    assert min(m.seq for m in requester.heartbeats[seen:]) > last_seq
    assert requester.bad == []


async def test_restart_after_delete_registers_again(
    requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    first = spawn()
    await until(lambda: len(requester.heartbeats) >= 1)
    await first.stop()
    requester.forget(NODE)  # deleted while the agent was down; the sentinel is stale
    second = spawn()
    await until(lambda: len(requester.registrations) == 2)
    await until(lambda: second.agent.active)
    assert second.agent.membership is not None and second.agent.membership.registrations == 1


async def test_unauthenticated_info_reply_triggers_registration(
    requester: FakeRequester, spawn: Callable[..., Running]
) -> None:
    run = spawn()
    await until(lambda: len(requester.heartbeats) >= 1)
    requester.identity = Identity.generate()  # a requester with a new data dir
    requester.info_error = "unauthenticated"
    await until(lambda: len(requester.registrations) == 2)
    await until(lambda: run.agent.active)
    # The requester only records heartbeats whose MAC checks out under its new key.
    seen = len(requester.heartbeats)
    await until(lambda: len(requester.heartbeats) >= seen + 2)
    # Heartbeats sent before the re-registration carried the old key, and nothing else.
    assert all("MAC does not match" in bad for bad in requester.bad)


async def test_agent_starts_before_the_requester(nc: Client, spawn: Callable[..., Running]) -> None:
    run = spawn()
    await until(lambda: run.agent.status is Status.RUNNING)
    assert not run.agent.active
    requester = await FakeRequester(nc).start()
    await until(lambda: len(requester.heartbeats) >= 1)
    assert len(requester.registrations) == 1


async def test_refused_registration_is_retried_without_crashing(
    requester: FakeRequester, spawn: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    requester.keys[NODE] = Identity.generate().public_key  # node-1 is bound to another key
    run = spawn()
    await until(lambda: len(requester.registrations) >= 3)
    assert run.agent.status is Status.RUNNING and not run.agent.active
    assert requester.heartbeats == []
    assert any("key_mismatch" in r.getMessage() for r in caplog.records)
    requester.forget(NODE)  # the operator deletes the old record
    await until(lambda: len(requester.heartbeats) >= 1)


async def test_garbage_replies_do_not_stop_the_agent(
    nc: Client, spawn: Callable[..., Running]
) -> None:
    subjects = Subjects()

    async def garbage(msg: Msg) -> None:
        await msg.respond(b"\xc1 not msgpack")

    await nc.subscribe(subjects.node_register, cb=garbage)
    await nc.flush()
    run = spawn()
    await until(lambda: run.agent.errors >= 3)
    assert run.agent.status is Status.RUNNING


async def test_start_and_close_are_idempotent(
    requester: FakeRequester, state_dir: Path, nats_settings: NatsSettings
) -> None:
    agent = NodeAgent(make_config(state_dir, nats_settings), request_timeout=1.0)
    async with agent:
        await agent.start()
        assert agent.status is Status.RUNNING and agent.active
        assert len(requester.registrations) == 1
    await agent.close()
    assert agent.status is Status.CLOSED
    await until(lambda: len(requester.leaves) == 1)


async def test_stop_while_nats_is_unreachable(state_dir: Path) -> None:
    nats = NatsSettings(url="nats://127.0.0.1:1")
    agent = NodeAgent(make_config(state_dir, nats))
    task = asyncio.create_task(agent.serve())
    await until(lambda: agent.status is Status.STARTING and agent.local is not None)
    agent.stop()
    async with asyncio.timeout(5):
        await task
    assert agent.status is Status.CLOSED and agent.nc is None
