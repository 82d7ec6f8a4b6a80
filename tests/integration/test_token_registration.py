"""Enrollment tokens on real requesters (two of them, racing) and real node messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.api import ACTOR_HEADER, TOKEN_CREATE, TOKEN_REVOKE, NodeRejectRequest
from hivectl.core.bus import RemoteError, read_reply
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import Approval, Message, NodeRecord, OkReply, RegisterReply
from hivectl.core.subjects import Subjects
from hivectl.core.tokens import (
    TokenCreateReply,
    TokenCreateRequest,
    TokenRecord,
    TokenRevokeRequest,
    new_token,
)
from requester.service import Requester
from tests.support.cluster import RunningRequester, requester_config, wait_for
from tests.support.simnode import SimNode

S = Subjects()


@pytest.fixture
async def pair(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[list[Requester]]:
    """Two requesters of one cluster: registrations go to either (a queue group)."""
    configs = [
        requester_config(nats_server.url, tmp_path / name, name=name) for name in ("req-a", "req-b")
    ]
    async with RunningRequester(configs[0]) as a, RunningRequester(configs[1]) as b:
        yield [a, b]


async def call(nc: Client, verb: str, message: Message, reply: type[Message]) -> Message:
    data = await nc.request(
        S.api("node", verb), codec.encode(message), timeout=5, headers={ACTOR_HEADER: "alice"}
    )
    return read_reply(S.api("node", verb), data.data, reply)


async def create_token(nc: Client, **fields: object) -> str:
    token_id, token, hashed = new_token()
    request = TokenCreateRequest(token_id=token_id, hash=hashed, **fields)  # type: ignore[arg-type]
    await call(nc, TOKEN_CREATE, request, TokenCreateReply)
    return token


async def register(nc: Client, node_id: str, token: str) -> RegisterReply:
    node = SimNode(nc, node_id)
    node.token = token
    reply = await node.register()
    assert isinstance(reply, RegisterReply), reply
    return reply


async def stored_token(nc: Client, token: str) -> TokenRecord:
    kv = await nc.jetstream().key_value(S.tokens_bucket)
    entry = await kv.get(token.split(".")[0])
    assert entry.value is not None
    return codec.unpack_model(entry.value, TokenRecord)


async def stored_node(nc: Client, node_id: str) -> NodeRecord:
    kv = await nc.jetstream().key_value(S.nodes_bucket)
    entry = await kv.get(node_id)
    assert entry.value is not None
    return codec.unpack_model(entry.value, NodeRecord)


async def test_registrations_racing_on_two_requesters_never_overspend_a_token(
    pair: list[Requester], nc: Client
) -> None:
    token = await create_token(nc, ttl=3600.0, uses=3, labels={"pool": "batch"})
    await wait_for(lambda: all(r.tokens and r.tokens.get(token[:14]) for r in pair))
    names = [f"node-{i}" for i in range(12)]
    replies = await asyncio.gather(*(register(nc, name, token) for name in names))
    approved = [r.node_id for r in replies if r.approval is Approval.APPROVED]
    assert len(approved) == 3
    for reply in replies:
        if reply.approval is Approval.PENDING:
            assert "is used up (3 of 3 uses)" in reply.reason
    # Both requesters served registrations (the race was real), and the store agrees.
    assert all(r.membership and r.membership.received["register"] for r in pair)
    assert (await stored_token(nc, token)).used == 3
    for name in approved:
        record = await stored_node(nc, name)
        assert record.operator_labels == {"pool": "batch"}
        assert record.reason.startswith(f"enrollment token {token[:14]} (use ")


async def test_a_bad_token_leaves_the_node_pending_with_why(
    pair: list[Requester], nc: Client
) -> None:
    token = await create_token(nc, ttl=3600.0, uses=1)
    token_id, secret = token.split(".")
    cases = {
        "node-garbled": ("not-a-token", "malformed"),
        "node-wrong": (f"{token_id}.{'A' * 43}", f"enrollment token {token_id} is not valid"),
        "node-unknown": (
            f"t-000000000000.{secret}",
            "enrollment token t-000000000000 is not valid",
        ),
    }
    for name, (given, why) in cases.items():
        reply = await register(nc, name, given)
        assert reply.approval is Approval.PENDING
        assert why in reply.reason
        assert why in (await stored_node(nc, name)).reason
    assert (await stored_token(nc, token)).used == 0  # nothing spent on any of them


async def test_a_rejected_node_stays_rejected_and_a_pending_one_is_approved(
    pair: list[Requester], nc: Client
) -> None:
    token = await create_token(nc, ttl=3600.0, uses=5, labels={"zone": "b"})
    first = SimNode(nc, "node-r")
    await first.register()
    await call(nc, "reject", NodeRejectRequest(id="node-r", reason="not ours"), OkReply)
    await wait_for(lambda: all(r.registry and r.registry.get("node-r") and
                               r.registry.get("node-r").approval is Approval.REJECTED
                               for r in pair))  # fmt: skip
    first.token = token
    assert (await first.register()).approval is Approval.REJECTED  # type: ignore[union-attr]

    later = SimNode(nc, "node-p")
    await later.register()  # PENDING, no token yet
    later.token = token
    assert (await later.register()).approval is Approval.APPROVED  # type: ignore[union-attr]
    assert (await stored_node(nc, "node-p")).operator_labels == {"zone": "b"}
    assert (await later.register()).approval is Approval.APPROVED  # type: ignore[union-attr]
    assert (await stored_token(nc, token)).used == 1  # approved once, spent once


async def test_a_revoked_token_approves_no_more_and_labels_of_hive_are_refused(
    pair: list[Requester], nc: Client
) -> None:
    token = await create_token(nc, ttl=3600.0, uses=0)
    assert (await register(nc, "node-1", token)).approval is Approval.APPROVED
    await call(nc, TOKEN_REVOKE, TokenRevokeRequest(id=token[:6], reason="leaked"), OkReply)
    await wait_for(lambda: all(r.tokens and r.tokens.get(token[:14]).revoked_at for r in pair))  # type: ignore[union-attr]
    reply = await register(nc, "node-2", token)
    assert reply.approval is Approval.PENDING
    assert f"enrollment token {token[:14]} was revoked by alice" in reply.reason
    with pytest.raises(RemoteError, match=r"hive\.io/ prefix"):
        await create_token(nc, ttl=60.0, labels={"hive.io/gpu-model": "a100"})
