"""Users on real requesters: the role of every API verb, and a removal that reaches
every requester of a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivectl.core.auth import Identity
from hivectl.core.client import AsyncClient
from hivectl.core.config import ClientConfig, NatsSettings
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.errors import RemoteError
from hivectl.core.jobs import JobListReply, JobListRequest
from hivectl.core.models import OkReply
from hivectl.core.signing import user_credential_text
from hivectl.core.users import Role, UserAddReply, UserAddRequest, UserRemoveRequest
from tests.support.cluster import RunningRequester, requester_config, wait_for

V, S, OP, A = Role.VIEWER, Role.SUBMITTER, Role.OPERATOR, Role.ADMIN
# Every verb and the role it needs (a job's owner is checked as well: see jobs/api.py).
ROLES = {
    "node": {"list": V, "get": V, "approve": OP, "reject": OP, "delete": OP, "label": OP,
             "token_create": OP, "token_list": OP, "token_revoke": OP, "prune": OP,
             "cordon": OP, "uncordon": OP, "drain": OP},
    "job": {"submit": S, "list": V, "get": V, "executions": V, "stop": S, "logs": V,
            "result": V},
    "event": {"list": V},
    "user": {"add": A, "list": A, "remove": A},
    "usage": {"report": V},
    "quota": {"set": A, "get": V},
}  # fmt: skip


async def test_every_verb_needs_the_role_it_declares(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with RunningRequester(requester_config(nats_server.url, tmp_path / "r")) as req:
        served = {r.noun: {verb: r.needed(verb) for verb in r.handlers} for r in req.routers}
    assert served == ROLES


async def test_a_removed_user_is_refused_by_every_requester(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with (
        RunningRequester(requester_config(nats_server.url, tmp_path / "a", name="req-a")) as a,
        RunningRequester(requester_config(nats_server.url, tmp_path / "b", name="req-b")) as b,
    ):
        admin = AsyncClient(config=ClientConfig(nats=NatsSettings(url=nats_server.url)))
        key = Identity.generate()
        async with admin:
            request = UserAddRequest(
                name="alice", role=Role.SUBMITTER, public_key=key.public_key, with_nats=False
            )
            added = await admin.call("user", "add", request, UserAddReply)
            creds = tmp_path / "alice.creds.toml"
            creds.write_text(user_credential_text("alice", key.seed, added.requester_key, "", ""))
            await wait_for(lambda: a.users and b.users and a.users.get("alice") and
                           b.users.get("alice"), what="alice on both")  # fmt: skip
            nats = NatsSettings(url=nats_server.url, credentials_file=creds)
            async with AsyncClient(config=ClientConfig(nats=nats)) as alice:
                for _ in range(10):  # the queue group sends these to both requesters
                    await alice.call("job", "list", JobListRequest(), JobListReply)
                await admin.call("user", "remove", UserRemoveRequest(name="alice"), OkReply)
                await wait_for(lambda: b.users is not None and b.users.get("alice") is None,
                               timeout=1.0, what="req-b to forget alice")  # fmt: skip
                for _ in range(10):
                    with pytest.raises(RemoteError, match="no user 'alice'"):
                        await alice.call("job", "list", JobListRequest(), JobListReply)
    assert a.gate is not None and b.gate is not None
    assert a.gate.refused + b.gate.refused == 10
