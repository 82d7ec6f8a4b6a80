"""Pruning UNKNOWN nodes: automatically on the leader, and on request, counted only over
time the requester itself has watched."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.api import NODE_PRUNE, NodePruneReply, NodePruneRequest
from hivectl.core.bus import request
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import NodeEvent
from hivectl.core.subjects import Subjects
from requester.service import Requester
from tests.support.cluster import RunningRequester, requester_config, wait_for
from tests.support.simnode import SimNode

S = Subjects()
PRUNE_AFTER = 2.0
LOST_AFTER = 3.0  # disconnected_after, where a test needs it long


@contextlib.asynccontextmanager
async def beating(node: SimNode) -> AsyncIterator[None]:
    """`node` heartbeats every 0.2s (its `unhealthy_after` is 0.6s) while inside."""

    async def beat() -> None:
        while True:
            await node.heartbeat()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


async def deleted_events(nc: Client, node_id: str) -> list[NodeEvent]:
    sub = await nc.jetstream().subscribe(S.node_events(node_id), ordered_consumer=True)
    found: list[NodeEvent] = []
    with contextlib.suppress(TimeoutError):
        while True:
            msg = await sub.next_msg(timeout=0.5)
            event = codec.decode(msg.data, NodeEvent)
            if event.event == "deleted":
                found.append(event)
    await sub.unsubscribe()
    return found


async def test_the_leader_prunes_from_its_own_start_and_spares_the_living(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    # A first requester knows three nodes, all heard from; then it stops.
    before = requester_config(nats_server.url, tmp_path / "req")
    nodes = {name: SimNode(nc, name) for name in ("gone", "live", "late")}
    async with RunningRequester(before) as first:
        for node in nodes.values():
            await node.register()
            await node.heartbeat()
        await wait_for(lambda: all(first.liveness.health(n) == "HEALTHY" for n in nodes))
    # Its successor prunes: nothing before it has itself gone disconnected_after (1.2s,
    # when it would have seen a node it heard at its start go) and then PRUNE_AFTER
    # without a heartbeat, however long the records had gone unheard while no
    # requester ran.
    after = requester_config(nats_server.url, tmp_path / "req", node_prune_after=PRUNE_AFTER)
    async with RunningRequester(after) as req, beating(nodes["live"]):
        assert req.registry is not None
        started = req._started_at
        async with beating(nodes["late"]):
            await wait_for(lambda: req.liveness.health("late") == "HEALTHY")
        late_stopped = time.monotonic()
        await wait_for(lambda: req.registry.get("gone") is None, timeout=PRUNE_AFTER + 5)  # type: ignore[union-attr]
        assert time.monotonic() - started >= 1.2 + PRUNE_AFTER
        # `late` went UNKNOWN (disconnected_after 1.2s) after its last beat: its time
        # counts from then.
        await wait_for(lambda: req.registry.get("late") is None, timeout=PRUNE_AFTER + 5)  # type: ignore[union-attr]
        assert time.monotonic() - late_stopped >= 1.2 + PRUNE_AFTER
        assert req.registry.get("live") is not None
    [event] = await deleted_events(nc, "gone")
    assert event.actor == "requester:requester"
    assert event.reason.startswith("pruned: UNKNOWN for 2")
    assert event.reason.endswith("over node_prune_after 2s")


async def test_prune_on_request_lists_first_and_removes_only_what_was_confirmed(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    config = requester_config(nats_server.url, tmp_path / "req", disconnected_after=LOST_AFTER)
    async with RunningRequester(config) as req:
        for name in ("a", "b", "c"):
            await SimNode(nc, name).register()
        back = SimNode(nc, "back")
        await back.register()

        async def prune(**fields: object) -> NodePruneReply:
            message = NodePruneRequest(**fields)  # type: ignore[arg-type]
            return await request(nc, S.api("node", NODE_PRUNE), message, NodePruneReply, 5)

        # Not heard from, but not yet for disconnected_after since the requester
        # started (they may be about to send their first heartbeat): nothing listed.
        none = await prune(unknown_for=0.0)
        if none.watching_for < LOST_AFTER:  # else this machine stalled for seconds
            assert none.nodes == []
        # Then they are UNKNOWN, though not for an hour as this requester has seen.

        async def four() -> NodePruneReply | None:
            listed = await prune(unknown_for=0.0)
            return listed if len(listed.nodes) == 4 else None

        listed = await wait_for(four, timeout=LOST_AFTER + 3, what="four nodes UNKNOWN")
        assert (await prune(unknown_for=3600.0)).nodes == []
        assert sorted(n.node_id for n in listed.nodes) == ["a", "b", "back", "c"]
        assert not listed.pruned and req.registry and len(req.registry) == 4
        # `back` is heard from between the listing and the removal: it stays.
        await back.heartbeat()
        await wait_for(lambda: req.liveness.health("back") == "HEALTHY")
        done = await prune(unknown_for=0.0, dry_run=False, ids=["a", "back", "c"])
        assert sorted(n.node_id for n in done.nodes) == ["a", "c"] and done.pruned
        assert sorted(req.registry.ids()) == ["b", "back"]
    [event] = await deleted_events(nc, "a")
    assert event.reason.startswith("pruned: UNKNOWN for ")
    assert event.reason.endswith("over --unknown-for 0s")


async def test_of_two_requesters_only_the_leader_prunes(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    configs = [
        requester_config(nats_server.url, tmp_path / name, name=name, node_prune_after=0.5)
        for name in ("req-a", "req-b")
    ]
    async with RunningRequester(configs[0]) as a, RunningRequester(configs[1]) as b:
        await SimNode(nc, "gone").register()
        await wait_for(lambda: a.registry.get("gone") is None, timeout=5)  # type: ignore[union-attr]
        leader: Requester = a if a.duties and a.duties.active else b
    [event] = await deleted_events(nc, "gone")
    assert event.actor == f"requester:{leader.config.name}"
