"""Several requesters on one NATS share one identity, and only requesters can read it.

A node registers with whichever requester of the queue group answers, and its message
key is derived with that requester's key; every other requester must hold the same key
or it drops the node's heartbeats, info and execution updates as unauthenticated.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig, StreamSource

from hivectl.core.auth import Identity
from hivectl.core.bus import connect_daemon
from hivectl.core.config import NatsSettings
from hivectl.core.credentials import RoleCredentials, authorization_block, ensure_credentials
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import Health, InfoReply, RegisterReply
from hivectl.core.subjects import REQUESTER_SEED_KEY, Subjects
from tests.support.cluster import RunningRequester, requester_config, wait_for
from tests.support.simnode import SimNode

S = Subjects()
SEED_STREAM = S.kv_stream(S.cluster_bucket)
SEED_SUBJECT = f"$KV.{S.cluster_bucket}.{REQUESTER_SEED_KEY}"


def running(url: str, data_dir: Path, **overrides: object) -> RunningRequester:
    return RunningRequester(requester_config(url, data_dir, **overrides))


async def test_two_requesters_share_one_key_and_each_authenticates_the_others_nodes(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    async with running(nats_server.url, tmp_path / "a") as a:
        node = SimNode(nc, "node-1")
        assert isinstance(await node.register(), RegisterReply)  # only A answers now
        async with running(nats_server.url, tmp_path / "b") as b:
            assert a.identity is not None and b.identity is not None
            assert b.identity.public_key == a.identity.public_key
            await node.heartbeat()
            for requester in (a, b):  # every requester hears every heartbeat
                await wait_for(
                    lambda r=requester: r.liveness.health("node-1") is Health.HEALTHY,  # type: ignore[misc]
                    what=f"{requester.config.data_dir.name} to take node-1's heartbeat",
                )
            for _ in range(6):  # info requests go to either requester of the queue group
                reply = await node.send_info()
                assert isinstance(reply, InfoReply) and reply.known, reply
            assert b.membership is not None and not b.membership.rejected
            assert a.membership is not None and not a.membership.rejected


async def test_requesters_starting_together_agree_on_one_key(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    runs = [running(nats_server.url, tmp_path / name) for name in ("a", "b", "c")]
    async with contextlib.AsyncExitStack() as stack:
        started = await asyncio.gather(*(stack.enter_async_context(run) for run in runs))
        keys = {r.identity.public_key for r in started if r.identity is not None}
        assert len(keys) == 1, keys


async def test_a_single_requester_upgrading_keeps_its_key_and_the_next_adopts_it(
    nats_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its nodes registered with its own key: it publishes that key, so they keep
    working; a requester that ran alone elsewhere takes the cluster's and says so."""
    old, other = Identity.generate(), Identity.generate()
    for name, identity in (("a", old), ("b", other)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "requester.seed").write_bytes(identity.seed + b"\n")
    async with running(nats_server.url, tmp_path / "a") as a:
        assert a.identity is not None and a.identity.public_key == old.public_key
    with caplog.at_level(logging.WARNING, logger="hive.requester"):
        async with running(nats_server.url, tmp_path / "b") as b:
            assert b.identity is not None and b.identity.public_key == old.public_key
    assert "is not the cluster's" in caplog.text and "register again" in caplog.text


# -- who may read it -------------------------------------------------------------------


@pytest.fixture
def creds(tmp_path: Path) -> dict[str, RoleCredentials]:
    return ensure_credentials(tmp_path / "credentials")


@pytest.fixture
def secured(tmp_path: Path, creds: dict[str, RoleCredentials]) -> Iterator[EmbeddedNats]:
    """A server with the role users and permissions the requester's embedded one has."""
    block = authorization_block(creds, S)
    with EmbeddedNats(tmp_path / "nats", port=0, extra_config=block) as server:
        yield server


class Role:
    """A connection as one role, with the permission errors the server sent it."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def ask(self, subject: str, payload: bytes = b"") -> bytes | None:
        """The reply to a request, or None when nothing came back (the server dropped it)."""
        try:
            return (await self.nc.request(subject, payload, timeout=0.5)).data
        except Exception:
            return None


@contextlib.asynccontextmanager
async def as_role(
    server: EmbeddedNats, creds: dict[str, RoleCredentials], role: str
) -> AsyncIterator[Role]:
    errors: list[str] = []
    nc = await connect_daemon(NatsSettings(url=server.url, credentials_file=creds[role].path), role)

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc._error_cb = on_error  # the daemon connection logs them; the test wants them
    try:
        yield Role(nc, errors)
    finally:
        await nc.close()


def every_way_to_read_the_seed() -> list[tuple[str, bytes]]:
    """JetStream calls that would hand the seed (or a copy of it) to their caller."""
    mirror = StreamConfig(name="COPY", mirror=StreamSource(name=SEED_STREAM))
    sourced = StreamConfig(name=S.events_stream, sources=[StreamSource(name=SEED_STREAM)])
    consumer = {"stream_name": SEED_STREAM, "config": {"deliver_policy": "all"}}
    last = {"last_by_subj": SEED_SUBJECT}
    return [
        (f"$JS.API.STREAM.MSG.GET.{SEED_STREAM}", _json(last)),
        (f"$JS.API.DIRECT.GET.{SEED_STREAM}", _json(last)),
        (f"$JS.API.DIRECT.GET.{SEED_STREAM}.{SEED_SUBJECT}", b""),
        (f"$JS.API.STREAM.SNAPSHOT.{SEED_STREAM}", _json({"deliver_subject": "_INBOX.snap"})),
        (f"$JS.API.CONSUMER.CREATE.{SEED_STREAM}", _json(consumer)),
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{SEED_STREAM}.peek", _json(consumer)),
        ("$JS.API.STREAM.CREATE.COPY", _json(mirror.as_dict())),
        (f"$JS.API.STREAM.UPDATE.{S.events_stream}", _json(sourced.as_dict())),
        (f"$JS.API.STREAM.PURGE.{SEED_STREAM}", b""),
    ]


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


async def test_only_requesters_can_read_the_cluster_seed(
    secured: EmbeddedNats, creds: dict[str, RoleCredentials], tmp_path: Path
) -> None:
    config = requester_config(secured.url, tmp_path / "a")
    config.nats.credentials_file = creds["requester"].path
    async with RunningRequester(config) as a:
        assert a.identity is not None
        seed = a.identity.seed
        async with as_role(secured, creds, "requester") as requester:
            # The calls below are the right ones: a requester gets the seed with them.
            got = await requester.ask(*every_way_to_read_the_seed()[0])
            assert got is not None and base64.b64encode(seed) in got
        for role in ("operator", "compute"):
            async with as_role(secured, creds, role) as other:
                for subject, payload in every_way_to_read_the_seed():
                    reply = await other.ask(subject, payload)
                    assert reply is None, (role, subject, reply)  # dropped: no answer at all
                await wait_for(
                    lambda o=other: len(o.errors) >= len(every_way_to_read_the_seed()),  # type: ignore[misc]
                    what=f"{role}'s permission errors",
                )
                assert all("permissions violation" in e.lower() for e in other.errors)


async def test_listening_on_every_inbox_does_not_show_the_seed_to_a_requester_starting(
    secured: EmbeddedNats, creds: dict[str, RoleCredentials], tmp_path: Path
) -> None:
    """Operators and nodes may subscribe to `_INBOX.>` (their own replies come there);
    the requesters' replies, the seed among them, go to a prefix they cannot."""
    config = requester_config(secured.url, tmp_path / "a")
    config.nats.credentials_file = creds["requester"].path
    seen: list[bytes] = []

    async def sniff(msg: Msg) -> None:
        seen.append(msg.data)

    async with (
        as_role(secured, creds, "operator") as operator,
        as_role(secured, creds, "compute") as compute,
    ):
        for role in (operator, compute):
            await role.nc.subscribe("_INBOX.>", cb=sniff)
            await role.nc.flush()
        async with RunningRequester(config) as a:
            assert a.identity is not None
            first = a.identity.seed
        config_b = requester_config(secured.url, tmp_path / "b")
        config_b.nats.credentials_file = creds["requester"].path
        async with RunningRequester(config_b) as b:  # reads the seed a stored
            assert b.identity is not None and b.identity.seed == first
        await operator.nc.flush()
        await compute.nc.flush()
        forms = (first, base64.b64encode(first))  # as stored, and as a JSON reply has it
        assert not any(form in data for form in forms for data in seen)
        # What a requester would leak on the usual prefix: a reply the sniffers see.
        async with as_role(secured, creds, "requester") as plain:
            got = await plain.ask(*every_way_to_read_the_seed()[0])
            assert got is not None
            await wait_for(lambda: got in seen, what="the sniffers to see a plain reply")
