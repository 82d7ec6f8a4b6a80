"""Hostile input on every subject the requester and the agent serve.

A real requester and a real node agent run on a real nats-server, in a thread of their
own; hypothesis sends 10,000 malformed or hostile messages at them: random bytes,
truncated msgpack, wrong kinds, huge and deep structures, hostile ids, negative and NaN
resources, and the same again sealed with a real node's key so they pass the MAC and
reach validation. Both daemons must stay up, every request must get an error reply,
no record may change, and the rejection counters must add up.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from hivectl.core import auth, codec
from hivectl.core.bus import connect_daemon
from hivectl.core.config import (
    ExecutorSettings,
    NatsSettings,
    NodeAgentConfig,
    ProcessExecutorSettings,
)
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import OfferReply
from hivectl.core.models import MESSAGES, ErrorReply, Health, InfoReply, Message
from hivectl.core.subjects import Subjects
from nodeagent.service import NodeAgent
from requester.service import Requester
from tests.support.cluster import requester_config, wait_for
from tests.support.simnode import SimNode

T = TypeVar("T")
S = Subjects()
HOSTILE_IDS = ["a.b", "*", ">", "\x00", "A", "-x", "", "x" * 64, "ü", "x" * 10_000, "node-1"]
PER_TEST = 5000  # two tests: 10,000 messages in all


class Harness:
    """Requester + agent serving in a background event loop; tests call into it."""

    def __init__(self, url: str, base: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.requester = Requester(requester_config(url, base / "req", auto_approve=True))
        agent_cfg = NodeAgentConfig(
            name="agent-1", nats=NatsSettings(url=url), state_dir=base / "agent",
            heartbeat_interval=0.2, resource_update_interval=0.5, info_update_interval=1.0,
            executors=ExecutorSettings(process=ProcessExecutorSettings(enabled=True)),
        )  # fmt: skip
        self.agent = NodeAgent(agent_cfg)
        self.tasks = [self.run(_spawn(self.requester.serve())), None]
        self.run(wait_for(lambda: self.requester.status == "running", what="requester"))
        self.tasks[1] = self.run(_spawn(self.agent.serve()))
        self.run(wait_for(lambda: self.requester.liveness.health("agent-1") is Health.HEALTHY,
                          timeout=15, what="agent HEALTHY"))  # fmt: skip
        self.nc: Client = self.run(connect_daemon(NatsSettings(url=url), "fuzzer"))
        self.node = SimNode(self.nc, "fuzz-node")
        self.run(self.node.register())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.nc.close())
        self.agent.stop()
        self.requester.stop()
        for task in self.tasks:
            self.run(_join(task))
        self.run(_cancel_leftovers())  # nats-py's own helper tasks
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.ensure_future(coro)


async def _cancel_leftovers() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _join(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        await asyncio.wait_for(task, 20)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    base = tmp_path_factory.mktemp("fuzz")
    with EmbeddedNats(base / "nats", port=0) as server:
        h = Harness(server.url, base)
        try:
            yield h
        finally:
            h.close()


# -- strategies -------------------------------------------------------------------------
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.none(),
    st.booleans(),
    st.sampled_from(HOSTILE_IDS),
)
structures = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
message_like = st.fixed_dictionaries(
    {"kind": st.sampled_from([*MESSAGES, "nope", ""]), "v": st.sampled_from([1, 2, 0, -1, "1"])},
    optional={
        "node_id": st.sampled_from([*HOSTILE_IDS, "fuzz-node", "agent-1"]),
        "seq": scalars,
        "id": st.sampled_from(HOSTILE_IDS),
        "approval": st.just("APPROVED"),
        "info": structures,
        "resources": st.fixed_dictionaries(
            {"cpu": st.sampled_from([-1.0, float("nan"), float("inf"), 1e300])}
        ),
        "spec": structures,
        "exec_id": st.sampled_from(["e-0000000000000000", "*", "e-x"]),
    },
)
NESTED: Any = []
for _ in range(40):
    NESTED = [NESTED]
DEEP = codec.pack({"kind": "heartbeat", "node_id": "fuzz-node", "seq": NESTED})
HUGE = codec.pack({"kind": "info", "node_id": "x" * 10_000, "info": {"hostname": "h" * 100_000}})
TOO_BIG = b"\x81" + b"x" * (2 * 1024 * 1024)
payloads = st.one_of(
    st.binary(max_size=2048),
    message_like.map(codec.pack),
    structures.map(codec.pack),
    message_like.map(codec.pack).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
    st.sampled_from([DEEP, HUGE, b"", b"\xc1", b"\x92\x01"]),
)


def subject_for(where: str) -> str:
    if where.startswith("api."):
        _, noun, verb = where.split(".")
        return S.api(noun, verb)
    if where == "register":
        return S.node_register
    kind, node = where.split(":")
    if kind in ("offer", "cancel"):
        return S.compute(node, kind)
    return getattr(S, f"node_{kind}")(node)  # type: ignore[no-any-return]


REQUESTER_REQUESTS = [
    "register", "info:fuzz-node", "info:ghost",
    *(f"api.node.{v}" for v in ("list", "get", "approve", "reject", "delete")),
    *(f"api.job.{v}" for v in ("submit", "list", "get", "stop")),
]  # fmt: skip
REQUESTER_PUBLISHES = [
    f"{kind}:{node}"
    for kind in ("heartbeat", "resources", "leave", "exec")
    for node in ("fuzz-node", "ghost")
]
AGENT_REQUESTS = ["offer:agent-1", "cancel:agent-1"]


def snapshot(h: Harness) -> tuple[Any, ...]:
    registry, jobs = h.requester.registry, h.requester.jobs
    assert registry is not None and jobs is not None
    records = sorted(codec.pack_model(r) for r in registry.snapshot())
    return records, sorted(codec.pack_model(j) for j in jobs.jobs())


def counters(h: Harness) -> Counter[str]:
    m, api, job_api = h.requester.membership, h.requester.node_api, h.requester.job_api
    assert m is not None and api is not None and job_api is not None
    agent, joins = h.agent, h.agent.membership
    assert joins is not None
    # The real agent keeps talking during the storm; what it sends is not fuzz.
    agent_sent = (
        agent.heartbeats_sent + agent.resource_updates_sent + joins.info_updates_sent
        + joins.registrations
    )  # fmt: skip
    execs = h.requester.exec_consumer
    assert execs is not None
    return Counter(
        node_msgs=sum(m.received.values()) + sum(m.rejected.values()) - agent_sent,
        exec_msgs=execs.received + sum(execs.rejected.values()),
        api=api.served + job_api.served,
        api_errors=api.errors + job_api.errors,
    )


# -- the storms -------------------------------------------------------------------------
def test_requester_takes_5000_hostile_messages(harness: Harness) -> None:
    h = harness
    assert h.node.key is not None
    before, start = snapshot(h), counters(h)
    sent: Counter[str] = Counter()
    replies: list[tuple[str, Message]] = []

    @settings(max_examples=PER_TEST, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        where=st.sampled_from(REQUESTER_REQUESTS + REQUESTER_PUBLISHES),
        payload=payloads,
        sealed=st.booleans(),
    )
    def storm(where: str, payload: bytes, sealed: bool) -> None:
        data = auth.seal(payload, h.node.key) if sealed and ":" in where else payload  # type: ignore[arg-type]
        subject = subject_for(where)
        if where in REQUESTER_PUBLISHES:
            h.run(h.nc.publish(subject, data))  # exec: into the HIVE_EXEC stream
            sent["exec_msgs" if where.startswith("exec:") else "node_msgs"] += 1
            return
        reply = h.run(h.nc.request(subject, data, timeout=10))
        replies.append((where, codec.decode(reply.data)))
        sent["api" if where.startswith("api.") else "node_msgs"] += 1

    storm()
    h.run(h.nc.flush())

    def all_counted() -> bool:
        now = counters(h)
        return all(now[k] - start[k] >= sent[k] for k in ("node_msgs", "exec_msgs"))

    wait = wait_for(all_counted, timeout=60, what="every node message counted")
    h.run(wait)
    end = counters(h)
    # Every node message was either accepted (a well-formed heartbeat the node really
    # sealed is legitimate) or dropped and counted, exactly once.
    assert end["node_msgs"] - start["node_msgs"] == sent["node_msgs"]
    assert end["exec_msgs"] - start["exec_msgs"] == sent["exec_msgs"]
    assert end["api"] - start["api"] == sent["api"]
    # Random maps now and then make a well-formed read (`{"kind": "node_list"}`); no
    # change ever gets through, and every other request is answered with an error.
    reads = [r for where, r in replies if where.endswith((".list", ".get"))]
    succeeded = [r for r in reads if not isinstance(r, ErrorReply)]
    assert end["api_errors"] - start["api_errors"] == sent["api"] - len(succeeded)
    for where, reply in replies:
        if where.endswith((".list", ".get")):
            continue
        assert isinstance(reply, ErrorReply) or (
            isinstance(reply, InfoReply) and reply.approval != "APPROVED"
        ), (where, reply)
    assert snapshot(h) == before
    assert h.requester.status == "running"
    assert h.requester.liveness.health("agent-1") is Health.HEALTHY


def test_agent_takes_5000_hostile_offers_and_cancels(harness: Harness) -> None:
    h = harness
    executions = h.agent.executions
    assert executions is not None and h.agent.ledger is not None
    available = h.agent.ledger.available
    key = h.requester.registry.message_key("agent-1") if h.requester.registry else None
    assert key is not None
    replies: list[Message] = []

    @settings(max_examples=PER_TEST, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(where=st.sampled_from(AGENT_REQUESTS), payload=payloads, sealed=st.booleans())
    def storm(where: str, payload: bytes, sealed: bool) -> None:
        data = auth.seal(payload, key) if sealed else payload
        reply = h.run(h.nc.request(subject_for(where), data, timeout=10))
        replies.append(codec.decode(reply.data))

    storm()
    assert len(replies) >= PER_TEST
    # An authentic offer for this node whose spec breaks the rules is refused for good.
    refused = [r for r in replies if isinstance(r, OfferReply)]
    assert all(not r.accepted and r.permanent for r in refused)
    assert all(isinstance(r, ErrorReply | OfferReply) or r.kind == "ok" for r in replies)
    assert executions.accepted == 0
    assert h.agent.ledger.available == available
    assert h.requester.liveness.health("agent-1") is Health.HEALTHY
    assert h.agent.status == "running"


def test_oversized_payloads_are_refused_by_the_server(harness: Harness) -> None:
    from nats.errors import MaxPayloadError

    with pytest.raises(MaxPayloadError):
        harness.run(harness.nc.publish(S.node_heartbeat("fuzz-node"), TOO_BIG))
