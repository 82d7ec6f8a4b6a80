"""Enrollment token format and states, and who a request says it comes from."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from hivectl.core.api import ACTOR_HEADER
from hivectl.core.client import default_actor
from hivectl.core.config import ClientConfig, ConfigError, load_config
from hivectl.core.tokens import TokenInfo, hash_secret, new_token, secret_matches, split_token
from requester.routing import UNNAMED, requested_by

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


def test_a_new_token_splits_into_its_id_and_a_secret_that_matches_only_its_hash() -> None:
    token_id, token, hashed = new_token()
    parts = split_token(token)
    assert parts is not None
    assert parts[0] == token_id and len(parts[1]) == 43  # 32 random bytes, base64url
    assert secret_matches(parts[1], hashed) and hashed == hash_secret(parts[1])
    # Another first character (the last one of 43 carries only 4 of its 6 bits: one in
    # 16 tokens already ends in "A", and some others decode to the same bytes).
    altered = ("B" if parts[1][0] == "A" else "A") + parts[1][1:]
    assert not secret_matches(altered, hashed)
    assert split_token(f"  {token}\n") == parts  # pasted with the newline echo printed
    other_id, other, _ = new_token()
    assert (other_id, other) != (token_id, token)


@pytest.mark.parametrize(
    "given",
    [
        "",
        "t-3f9a2b1c4d5e",  # the id alone
        "t-3f9a2b1c4d5e." + "A" * 42,  # a secret cut short
        "t-3f9a2b1c4d5." + "A" * 43,  # an id cut short
        "T-3F9A2B1C4D5E." + "A" * 43,
        "t-3f9a2b1c4d5e." + "A" * 42 + "=",  # not base64url
        "t-3f9a2b1c4d5e:" + "A" * 43,
        "t-3f9a2b1c4d5e." + "A" * 20 + " " + "A" * 22,
    ],
)
def test_anything_else_is_not_a_token(given: str) -> None:
    assert split_token(given) is None


def token(**fields: object) -> TokenInfo:
    return TokenInfo.model_validate({"token_id": "t-3f9a2b1c4d5e", "created_at": NOW, **fields})


def test_a_token_says_why_it_approves_nothing() -> None:
    fresh = token(expires_at=NOW + timedelta(hours=1), uses=2, used=1)
    assert fresh.state(NOW) == "active" and fresh.problem(NOW) == "" and fresh.uses_left() == 1
    spent = token(uses=2, used=2)
    assert spent.problem(NOW) == "enrollment token t-3f9a2b1c4d5e is used up (2 of 2 uses)"
    unlimited = token(uses=0, used=5000)
    assert unlimited.uses_left() is None and unlimited.state(NOW) == "active"
    old = token(expires_at=NOW, uses=2, used=2)  # expired wins over used up
    assert old.problem(NOW) == "enrollment token t-3f9a2b1c4d5e expired at 2025-05-01 12:00:00 UTC"
    revoked = old.model_copy(update={"revoked_at": NOW, "revoked_by": "bob"})
    assert revoked.state(NOW) == "revoked"  # revoked wins over everything
    assert revoked.problem(NOW).endswith("was revoked by bob at 2025-05-01 12:00:00 UTC")


def test_the_operator_is_named_by_config_else_by_user_and_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("HIVE_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "hivectl.toml"
    empty.write_text("")
    assert load_config(ClientConfig, empty).actor is None
    user, _, host = default_actor().partition("@")
    assert user and host
    named = tmp_path / "named.toml"
    named.write_text('actor = "alice"\n')
    assert load_config(ClientConfig, named).actor == "alice"
    monkeypatch.setenv("HIVE_ACTOR", "bob")
    assert load_config(ClientConfig, named).actor == "bob"
    monkeypatch.setenv("HIVE_ACTOR", "eve\r\nHive-Actor: root")  # it goes in a header
    with pytest.raises(ConfigError, match="actor"):
        load_config(ClientConfig, named)


def request(headers: dict[str, str] | None) -> Msg:
    return Msg(_client=None, subject="hive.api.node.approve", headers=headers)  # type: ignore[arg-type]


def test_the_requester_takes_the_claimed_name_printable_and_short() -> None:
    assert requested_by(request({ACTOR_HEADER: "alice@laptop"})) == "alice@laptop"
    assert requested_by(request({ACTOR_HEADER: "a\x1b[31mb"})) == "a[31mb"
    assert requested_by(request({ACTOR_HEADER: "x" * 500})) == "x" * 128
    assert requested_by(request(None)) == UNNAMED  # an older client
    assert requested_by(request({ACTOR_HEADER: "  "})) == UNNAMED
