"""Enrollment tokens end to end: hivectl makes them, real agents join with them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hivectl.core import codec
from hivectl.core.bus import connect_cli
from hivectl.core.config import NatsSettings
from hivectl.core.models import NodeRecord
from hivectl.core.subjects import Subjects
from tests.e2e.conftest import Cluster, poll

pytestmark = pytest.mark.e2e
S = Subjects()


def bucket(cluster: Cluster, name: str) -> dict[str, bytes]:
    """Every value in a KV bucket, read as an operator can."""

    async def read() -> dict[str, bytes]:
        nc = await connect_cli(NatsSettings(url=cluster.url, credentials_file=cluster.operator))
        try:
            kv = await nc.jetstream().key_value(name)
            return {key: (await kv.get(key)).value or b"" for key in await kv.keys()}
        finally:
            await nc.close()

    return asyncio.run(read())


def token_list(cluster: Cluster) -> dict[str, dict[str, object]]:
    listed = json.loads(cluster.hivectl("node", "token", "list", "-o", "json").stdout)
    return {token["token_id"]: token for token in listed}


def test_a_token_for_two_approves_exactly_two_agents_and_keeps_only_a_hash(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_requester()
    created = cluster.hivectl(
        "node", "token", "create", "--uses", "2", "-l", "pool=batch", "-m", "rack 7",
        actor="alice",
    )  # fmt: skip
    token = created.stdout.strip()
    token_id, secret = token.split(".")
    assert "cannot be shown again" in created.stderr
    # The three ways an agent is given a token: a flag, the environment, its config file.
    config = tmp_path / "agent.toml"
    config.write_text(f'token = "{token}"\n')
    cluster.start_agent("flag", flags=("--token", token))
    cluster.start_agent("env", extra_env={"HIVE_TOKEN": token})
    cluster.start_agent("file", extra_env={"HIVE_CONFIG": str(config)})

    def healthy() -> dict[str, tuple[str, str]]:
        states = cluster.states()
        return (
            states if len(states) == 4 and all(h == "HEALTHY" for _, h in states.values()) else {}
        )

    states = poll(healthy, what="three healthy agents")
    approvals = sorted(approval for node, (approval, _) in states.items() if node != "requester")
    assert approvals == ["APPROVED", "APPROVED", "PENDING"]
    [third] = [node for node, (approval, _) in states.items() if approval == "PENDING"]
    why = f"enrollment token {token_id} is used up (2 of 2 uses)"
    assert cluster.nodes()[third]["reason"] == why
    assert f"Reason:          {why}" in cluster.hivectl("node", "describe", third).stdout
    poll(lambda: f"stays PENDING: {why}" in cluster.log(third), what="the agent saying why")

    nodes = {
        k: codec.unpack_model(v, NodeRecord) for k, v in bucket(cluster, S.nodes_bucket).items()
    }
    for node, record in nodes.items():
        assert record.operator_labels == ({} if node == third else {"pool": "batch"})
    listed = token_list(cluster)[token_id]
    assert (listed["used"], listed["uses"], listed["created_by"]) == (2, 2, "alice")
    row = cluster.hivectl("node", "token", "list", "--no-headers").stdout.split()
    assert row[0] == token_id and "0/2" in row and "used" in row and "pool=batch" in row
    # Only the hash of the secret is kept: reading the bucket gives nobody the token.
    stored = bucket(cluster, S.tokens_bucket)
    assert list(stored) == [token_id]
    assert secret.encode() not in stored[token_id]
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored[token_id]
    assert secret not in cluster.log("requester")
    assert secret not in cluster.hivectl("events", "-o", "json").stdout


def test_an_expired_or_revoked_token_leaves_the_agent_pending_with_the_reason(
    cluster: Cluster,
) -> None:
    cluster.start_requester()
    expiring = cluster.hivectl("node", "token", "create", "--ttl", "1s").stdout.strip()
    revoked = cluster.hivectl("node", "token", "create").stdout.strip()
    revoked_id = revoked.split(".")[0]
    assert cluster.hivectl("node", "token", "revoke", revoked_id[:5], "-m", "leaked",
                           actor="bob").stdout == "Ok\n"  # fmt: skip
    expiring_id = expiring.split(".")[0]
    poll(
        lambda: (
            f"{expiring_id}" in (out := cluster.hivectl("node", "token", "list").stdout)
            and "expired" in out
        ),
        what="the token to expire",
    )

    cluster.start_agent("late", extra_env={"HIVE_TOKEN": expiring})
    cluster.start_agent("leaked", extra_env={"HIVE_TOKEN": revoked})
    poll(
        lambda: (
            cluster.states().get("late") == ("PENDING", "HEALTHY")
            and cluster.states().get("leaked") == ("PENDING", "HEALTHY")
        ),
        what="both agents PENDING",
    )
    nodes = cluster.nodes()
    assert nodes["late"]["reason"].startswith(f"enrollment token {expiring_id} expired at ")
    assert nodes["leaked"]["reason"].startswith(
        f"enrollment token {revoked_id} was revoked by bob at "
    )
    for name in ("late", "leaked"):
        poll(lambda n=name: "stays PENDING" in cluster.log(n), what=f"{name} saying why")
    # An operator can still approve it by hand.
    cluster.hivectl("node", "approve", "late", "-m", "checked by hand")
    assert cluster.states()["late"] == ("APPROVED", "HEALTHY")
    # Or delete it and have it register again with a good token.
    fresh = cluster.hivectl("node", "token", "create").stdout.strip()
    cluster.hivectl("node", "delete", "leaked")
    again = subprocess.run(
        [sys.executable, "-m", "nodeagent", "register", "--state-dir",
         str(cluster.base / "leaked"), "--token", fresh],
        env=cluster.env | {"HIVE_NATS__CREDENTIALS_FILE": str(cluster.compute)},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"registered leaked: APPROVED (enrollment token {fresh[:14]}")
    assert cluster.nodes()["leaked"]["approval"] == "APPROVED"
