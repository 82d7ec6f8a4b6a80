"""The requester's node membership, against a real nats-server and real node messages."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from hivectl.core import auth, codec
from hivectl.core.api import (
    NodeApproveRequest,
    NodeDeleteRequest,
    NodeGetReply,
    NodeGetRequest,
    NodeListReply,
    NodeListRequest,
    NodeRejectRequest,
    NodeView,
)
from hivectl.core.bus import RemoteError, connect_daemon, request
from hivectl.core.config import MetricsSettings, NatsSettings
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import (
    Approval,
    ErrorReply,
    Health,
    Heartbeat,
    InfoReply,
    InfoUpdate,
    NodeEvent,
    NodeType,
    OkReply,
    RegisterReply,
    Resources,
)
from hivectl.core.subjects import Subjects
from requester.service import Requester
from tests.support.cluster import RunningRequester, requester_config, wait_for
from tests.support.simnode import SimNode, sample_info

S = Subjects()


@pytest.fixture
async def requester(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Requester]:
    async with RunningRequester(requester_config(nats_server.url, tmp_path / "req")) as req:
        yield req


async def api(nc: Client, verb: str, message: object, reply: type) -> object:
    return await request(nc, S.api("node", verb), message, reply, timeout=5)  # type: ignore[arg-type]


async def joined(nc: Client, node_id: str) -> SimNode:
    node = SimNode(nc, node_id)
    answer = await node.register()
    assert isinstance(answer, RegisterReply)
    return node


async def test_new_node_is_pending_and_listed_after_the_requester(
    requester: Requester, nc: Client
) -> None:
    node = await joined(nc, "node-1")
    await node.heartbeat()
    await wait_for(lambda: requester.liveness.health("node-1") is Health.HEALTHY)
    reply = await api(nc, "list", NodeListRequest(), NodeListReply)
    assert isinstance(reply, NodeListReply)
    assert [(v.node_id, v.type, v.approval, v.health) for v in reply.nodes] == [
        ("requester", NodeType.REQUESTER, Approval.APPROVED, Health.HEALTHY),
        ("node-1", NodeType.COMPUTE, Approval.PENDING, Health.HEALTHY),
    ]
    assert reply.nodes[1].public_key == node.identity.public_key


async def test_health_goes_unhealthy_then_unknown_on_the_thresholds(
    requester: Requester, nc: Client
) -> None:
    node = await joined(nc, "node-1")
    await node.heartbeat()
    await wait_for(lambda: requester.liveness.health("node-1") is Health.HEALTHY)
    await wait_for(lambda: requester.liveness.health("node-1") is Health.UNHEALTHY, timeout=3)
    await wait_for(lambda: requester.liveness.health("node-1") is Health.UNKNOWN, timeout=3)
    await node.heartbeat()
    await wait_for(lambda: requester.liveness.health("node-1") is Health.HEALTHY)


async def test_leave_makes_a_node_unknown_at_once(requester: Requester, nc: Client) -> None:
    node = await joined(nc, "node-1")
    await node.heartbeat()
    await wait_for(lambda: requester.liveness.health("node-1") is Health.HEALTHY)
    await node.leave()
    await wait_for(lambda: requester.liveness.health("node-1") is Health.UNKNOWN, timeout=0.5)
    assert requester.liveness.transitions[(Health.HEALTHY, Health.UNHEALTHY)] == 0


async def test_approve_reject_delete_by_prefix_with_events(
    requester: Requester, nc: Client
) -> None:
    js = nc.jetstream()
    for name in ("node-1", "node-2", "node-3"):
        await joined(nc, name)
    assert isinstance(await api(nc, "approve", NodeApproveRequest(id="node-1"), OkReply), OkReply)
    await api(nc, "reject", NodeRejectRequest(id="node-3", reason="malicious node?"), OkReply)
    await api(nc, "delete", NodeDeleteRequest(id="node-2"), OkReply)
    reply = await api(nc, "list", NodeListRequest(), NodeListReply)
    assert isinstance(reply, NodeListReply)
    state = {v.node_id: (v.approval, v.reason) for v in reply.nodes if v.type is NodeType.COMPUTE}
    assert state == {
        "node-1": (Approval.APPROVED, ""),
        "node-3": (Approval.REJECTED, "malicious node?"),
    }
    with pytest.raises(RemoteError) as ambiguous:
        await api(nc, "get", NodeGetRequest(id="node"), NodeGetReply)
    assert ambiguous.value.code == "ambiguous"
    with pytest.raises(RemoteError) as missing:
        await api(nc, "approve", NodeApproveRequest(id="node-2"), OkReply)
    assert missing.value.code == "not_found"
    kinds = await _stream_events(js, "node-3")
    assert [(e.event, e.new) for e in kinds] == [
        ("registered", "PENDING"),
        ("approval", "REJECTED"),
    ]


async def _stream_events(js: object, node_id: str) -> list[NodeEvent]:
    sub = await js.subscribe(S.node_events(node_id), ordered_consumer=True)  # type: ignore[attr-defined]
    events: list[NodeEvent] = []
    while True:
        try:
            msg = await sub.next_msg(timeout=0.5)
        except Exception:
            break
        events.append(codec.decode(msg.data, NodeEvent))
    await sub.unsubscribe()
    return events


async def test_reregistering_keeps_approval_and_another_key_is_refused(
    requester: Requester, nc: Client
) -> None:
    node = await joined(nc, "node-1")
    await api(nc, "approve", NodeApproveRequest(id="node-1"), OkReply)
    again = await node.register()
    assert isinstance(again, RegisterReply) and again.approval is Approval.APPROVED
    impostor = SimNode(nc, "node-1")
    refused = await impostor.register()
    assert isinstance(refused, ErrorReply) and refused.code == "key_mismatch"
    assert requester.membership is not None
    assert requester.membership.rejected["key_mismatch"] == 1
    await api(nc, "delete", NodeDeleteRequest(id="node-1"), OkReply)
    fresh = await impostor.register()
    assert isinstance(fresh, RegisterReply) and fresh.approval is Approval.PENDING


async def test_forged_messages_are_dropped_and_counted(requester: Requester, nc: Client) -> None:
    a, b = await joined(nc, "node-a"), await joined(nc, "node-b")
    m = requester.membership
    assert m is not None
    # A's key on B's subject: the MAC does not check out under B's key.
    speaks_for_b = Heartbeat(node_id="node-b", seq=a.next_seq())
    await nc.publish(S.node_heartbeat("node-b"), a.sealed(speaks_for_b))
    # A's own key and subject, but the body speaks for B.
    await nc.publish(S.node_heartbeat("node-a"), a.sealed(speaks_for_b))
    await wait_for(lambda: m.rejected["unauthenticated"] == 1 and m.rejected["id_mismatch"] == 1)
    assert requester.liveness.health("node-b") is Health.UNKNOWN
    assert requester.liveness.health("node-a") is Health.UNKNOWN
    # A replayed heartbeat is refused the second time.
    await b.heartbeat()
    replay = b.sealed(Heartbeat(node_id="node-b", seq=b.seq))
    await nc.publish(S.node_heartbeat("node-b"), replay)
    await wait_for(lambda: m.rejected["replay"] == 1)


async def test_a_node_cannot_approve_itself(requester: Requester, nc: Client) -> None:
    node = await joined(nc, "node-1")
    body = codec.unpack(codec.encode(InfoUpdate(node_id="node-1", info=node.info)))
    body["approval"] = "APPROVED"
    body["info"]["approval"] = "APPROVED"
    assert node.key is not None
    reply = await nc.request(S.node_info("node-1"), auth.seal(codec.pack(body), node.key), 5)
    answer = codec.decode(reply.data, InfoReply)
    assert answer.known and answer.approval is Approval.PENDING
    assert requester.registry is not None
    record = requester.registry.get("node-1")
    assert record is not None and record.approval is Approval.PENDING


async def test_malformed_input_on_every_subject_leaves_it_serving(
    requester: Requester, nc: Client
) -> None:
    await joined(nc, "node-1")
    junk = [b"", b"\xc1", b"\x92\x01", b"x" * 2000, codec.pack({"kind": "heartbeat"})]
    subjects = [
        S.node_heartbeat("node-1"),
        S.node_resources("node-1"),
        S.node_leave("node-1"),
        S.node_heartbeat("ghost"),
    ]
    for subject in subjects:
        for data in junk:
            await nc.publish(subject, data)
    for data in junk:
        for subject in (S.node_register, S.node_info("node-1"), S.api("node", "list")):
            reply = await nc.request(subject, data, timeout=5)
            assert codec.decode(reply.data, (ErrorReply, InfoReply)) is not None
    m = requester.membership
    assert m is not None
    await wait_for(lambda: sum(m.rejected.values()) >= len(subjects) * len(junk))
    listed = await api(nc, "list", NodeListRequest(), NodeListReply)
    assert isinstance(listed, NodeListReply) and len(listed.nodes) == 2


async def test_deleted_node_is_ignored_until_it_registers_again(
    requester: Requester, nc: Client
) -> None:
    node = await joined(nc, "node-1")
    await api(nc, "delete", NodeDeleteRequest(id="node-1"), OkReply)
    await node.heartbeat()
    m = requester.membership
    assert m is not None
    await wait_for(lambda: m.rejected["unknown_node"] == 1)
    assert requester.liveness.health("node-1") is Health.UNKNOWN
    info = await nc.request(S.node_info("node-1"), b"anything", timeout=5)
    assert codec.decode(info.data, InfoReply).known is False


async def test_list_pages(requester: Requester, nc: Client) -> None:
    for i in range(5):
        await joined(nc, f"node-{i}")
    seen, after = [], ""
    while True:
        page = await api(nc, "list", NodeListRequest(limit=2, after=after), NodeListReply)
        assert isinstance(page, NodeListReply) and len(page.nodes) <= 2
        seen += [v.node_id for v in page.nodes]
        if not page.next:
            break
        after = page.next
    assert seen == ["requester"] + [f"node-{i}" for i in range(5)]


async def _list_all(nc: Client, **query: object) -> tuple[list[NodeView], list[int]]:
    """Every page of a node list: the views, and each reply's size in bytes."""
    views: list[NodeView] = []
    sizes: list[int] = []
    after = ""
    while True:
        message = NodeListRequest(after=after, **query)  # type: ignore[arg-type]
        raw = await nc.request(S.api("node", "list"), codec.encode(message), timeout=5)
        page = codec.decode(raw.data, NodeListReply)
        views += page.nodes
        sizes.append(len(raw.data))
        if not page.next:
            return views, sizes
        after = page.next


async def test_listed_views_match_describe_field_for_field(
    requester: Requester, nc: Client
) -> None:
    """The list is assembled from cached pieces; describe builds the view afresh. Both
    must say the same, also after a node's approval, health and resources change."""
    nodes = [await joined(nc, f"node-{i}") for i in range(3)]
    for round_ in range(2):
        await nodes[0].heartbeat()
        await nodes[1].resources(Resources(cpu=1.5 + round_, memory=2**30))
        change = NodeRejectRequest(id="node-2") if round_ else NodeApproveRequest(id="node-2")
        await api(nc, "reject" if round_ else "approve", change, OkReply)
        await wait_for(lambda: requester.liveness.resources("node-1") is not None)
        await wait_for(lambda: requester.liveness.health("node-0") is Health.HEALTHY)
        listed, _ = await _list_all(nc)
        for view in listed[1:]:
            got = await api(nc, "get", NodeGetRequest(id=view.node_id), NodeGetReply)
            assert isinstance(got, NodeGetReply)
            # Each answer reads the wall clock afresh to date the monotonic heartbeat time.
            assert _heard_apart(view, got.node) < 0.001
            assert view.model_copy(update={"last_heartbeat": None}) == got.node.model_copy(
                update={"last_heartbeat": None}
            )
    assert [v.approval for v in listed[1:]] == [Approval.PENDING] * 2 + [Approval.REJECTED]
    assert listed[2].resources is not None and listed[2].resources.available.cpu == 2.5


def _heard_apart(a: NodeView, b: NodeView) -> float:
    if a.last_heartbeat is None or b.last_heartbeat is None:
        return 0.0 if a.last_heartbeat is b.last_heartbeat else float("inf")
    return abs((a.last_heartbeat - b.last_heartbeat).total_seconds())


async def test_pages_stay_under_max_payload_with_large_nodes(
    tmp_path: Path,
) -> None:
    """Nodes with 64 labels each: a page holds as many as fit in one message."""
    with EmbeddedNats(tmp_path / "nats", port=0, max_payload=16 * 1024) as server:
        client = await connect_daemon(NatsSettings(url=server.url), "test-client")
        async with RunningRequester(requester_config(server.url, tmp_path / "req")):
            labels = {f"label-{i:02d}": "v" * 40 for i in range(64)}
            for i in range(12):
                node = SimNode(client, f"node-{i:02d}")
                node.info = sample_info(labels)
                assert isinstance(await node.register(), RegisterReply)
            listed, sizes = await _list_all(client)
        await client.close()
    assert [v.node_id for v in listed] == ["requester"] + [f"node-{i:02d}" for i in range(12)]
    assert len(sizes) > 2 and max(sizes) <= 16 * 1024


async def test_approvals_survive_a_restart_and_health_restarts_unknown(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    config = requester_config(nats_server.url, tmp_path / "req")
    async with RunningRequester(config):
        node = await joined(nc, "node-1")
        await api(nc, "approve", NodeApproveRequest(id="node-1"), OkReply)
        await node.heartbeat()
    async with RunningRequester(config) as again:
        got = await api(nc, "get", NodeGetRequest(id="node-1"), NodeGetReply)
        assert isinstance(got, NodeGetReply)
        assert (got.node.approval, got.node.health) == (Approval.APPROVED, Health.UNKNOWN)
        await node.heartbeat()  # the old MAC key still works: same requester identity
        await wait_for(lambda: again.liveness.health("node-1") is Health.HEALTHY)


async def test_metrics_endpoint_reports_nodes_and_rejections(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    config = requester_config(
        nats_server.url, tmp_path / "req", metrics=MetricsSettings(enabled=True, port=0)
    )
    async with RunningRequester(config) as req:
        node = await joined(nc, "node-1")
        await node.heartbeat()
        await nc.publish(S.node_heartbeat("node-1"), b"junk")
        await wait_for(
            lambda: req.membership is not None and req.membership.rejected["unauthenticated"]
        )
        body = await asyncio.to_thread(_scrape, req.metrics_port)
    assert 'hive_nodes{approval="PENDING"} 1.0' in body
    assert 'hive_nodes_health{status="HEALTHY"} 1.0' in body
    assert 'hive_node_messages_received_total{kind="heartbeat"} 1.0' in body
    assert 'hive_node_messages_rejected_total{reason="unauthenticated"} 1.0' in body


def _scrape(port: int | None) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


async def test_a_restarted_requester_derives_node_keys_before_their_heartbeats(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    config = requester_config(nats_server.url, tmp_path / "req")
    async with RunningRequester(config):
        for i in range(20):
            await joined(nc, f"node-{i}")
    async with RunningRequester(config) as again:
        registry = again.registry
        assert registry is not None
        await wait_for(lambda: len(registry._keys) == 20, what="keys derived")
