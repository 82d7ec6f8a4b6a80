"""Credentials by role on a real nats-server: who may connect, and who may do what."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import ObjectStoreConfig, StreamConfig

from hivectl.core.api import NodeApproveRequest, NodeGetReply, NodeGetRequest
from hivectl.core.bus import BusError, connect_cli, connect_daemon, request
from hivectl.core.config import NatsSettings
from hivectl.core.credentials import RoleCredentials, authorization_block, ensure_credentials
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import Approval, OkReply, RegisterReply
from hivectl.core.subjects import Subjects
from tests.support.cluster import RunningRequester, requester_config
from tests.support.simnode import SimNode

S = Subjects()


@pytest.fixture
def creds(tmp_path: Path) -> dict[str, RoleCredentials]:
    return ensure_credentials(tmp_path / "credentials")


@pytest.fixture
def secured(tmp_path: Path, creds: dict[str, RoleCredentials]) -> Iterator[EmbeddedNats]:
    block = authorization_block(creds, S)
    with EmbeddedNats(tmp_path / "nats", port=0, extra_config=block) as server:
        yield server


def as_role(server: EmbeddedNats, creds: dict[str, RoleCredentials], role: str) -> NatsSettings:
    return NatsSettings(url=server.url, credentials_file=creds[role].path)


@pytest.fixture
async def operator(
    secured: EmbeddedNats, creds: dict[str, RoleCredentials]
) -> AsyncIterator[Client]:
    nc = await connect_daemon(as_role(secured, creds, "operator"), "operator")
    yield nc
    await nc.close()


def test_files_are_private_and_stable(tmp_path: Path, creds: dict[str, RoleCredentials]) -> None:
    for cred in creds.values():
        assert cred.path.stat().st_mode & 0o777 == 0o600
    again = ensure_credentials(tmp_path / "credentials")
    assert {r: c.password for r, c in again.items()} == {r: c.password for r, c in creds.items()}


async def test_anonymous_and_wrong_credentials_are_refused(
    secured: EmbeddedNats, tmp_path: Path
) -> None:
    with pytest.raises(BusError, match="authorization"):
        await connect_cli(NatsSettings(url=secured.url))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[nats]\nuser = "operator"\npassword = "guess"\n')
    with pytest.raises(BusError, match="authorization"):
        await connect_cli(NatsSettings(url=secured.url, credentials_file=wrong))
    with pytest.raises(BusError, match="cannot read credentials file"):
        await connect_cli(NatsSettings(url=secured.url, credentials_file=tmp_path / "none"))


async def test_compute_cannot_use_the_operator_api(
    secured: EmbeddedNats, creds: dict[str, RoleCredentials], operator: Client, tmp_path: Path
) -> None:
    config = requester_config(secured.url, tmp_path / "req")
    config.nats.credentials_file = creds["requester"].path
    async with RunningRequester(config):
        compute = await connect_daemon(as_role(secured, creds, "compute"), "compute")
        try:
            node = SimNode(compute, "node-1")
            assert isinstance(await node.register(), RegisterReply)  # nodes may register
            with pytest.raises(BusError):  # the server drops it: nobody answers
                await request(
                    compute, S.api("node", "approve"), NodeApproveRequest(id="node-1"),
                    OkReply, timeout=1,
                )  # fmt: skip
            got = await request(operator, S.api("node", "get"), NodeGetRequest(id="node-1"),
                                NodeGetReply, timeout=5)  # fmt: skip
            assert got.node.approval is Approval.PENDING
            await request(operator, S.api("node", "approve"), NodeApproveRequest(id="node-1"),
                          OkReply, timeout=5)  # fmt: skip
        finally:
            await compute.close()


async def test_compute_can_do_what_an_agent_does_and_no_more(
    secured: EmbeddedNats, creds: dict[str, RoleCredentials], tmp_path: Path
) -> None:
    admin = await connect_daemon(as_role(secured, creds, "requester"), "requester")
    js = admin.jetstream()
    await js.add_stream(StreamConfig(name=S.exec_stream, subjects=[S.node_wildcard("exec")]))
    await js.add_stream(StreamConfig(name=S.logs_stream, subjects=[f"{S.prefix}.logs.>"]))
    await js.create_object_store(S.results_store, config=ObjectStoreConfig())
    compute = await connect_daemon(as_role(secured, creds, "compute"), "compute")
    try:
        cjs = compute.jetstream()
        ack = await cjs.publish(S.node_exec("node-1"), b"update")
        assert ack.seq == 1
        await cjs.publish(S.logs("j-0000000000000000", "e-0000000000000000"), b"line\n")
        store = await cjs.object_store(S.results_store)
        await store.put("e-0000000000000000", b"archive bytes")
        assert (await (await js.object_store(S.results_store)).get("e-0000000000000000")).data
        # ...but it may not listen to the operator API, nor publish events.
        errors: list[Exception] = []
        sniffer = await connect_daemon(as_role(secured, creds, "compute"), "sniffer")
        sniffer._error_cb = _collect(errors)
        await sniffer.subscribe(S.api_wildcard)
        await sniffer.publish(S.node_events("node-1"), b"forged")
        await sniffer.flush()
        await _until(lambda: len(errors) >= 2)
        assert all("permissions violation" in str(e).lower() for e in errors), errors
        await sniffer.close()
    finally:
        await compute.close()
        await admin.close()


def _collect(errors: list[Exception]):  # type: ignore[no-untyped-def]
    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    return on_error


async def _until(check) -> None:  # type: ignore[no-untyped-def]
    from tests.support.cluster import wait_for

    await wait_for(check, what="permission errors")
