"""Roles, signed requests and sealed replies: the rules, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.msg import Msg

from hivectl.core import codec
from hivectl.core.auth import AuthError, Identity
from hivectl.core.models import ErrorReply
from hivectl.core.signing import (
    CLOCK_SKEW,
    UserCredential,
    box_key,
    read_user_credential,
    seal_reply,
    sign_request,
    user_credential_text,
)
from hivectl.core.subjects import Subjects
from hivectl.core.users import ADMIN_USER, Role, UserRecord
from requester.gate import UserGate
from requester.routing import ApiRouter, Refusal

SUBJECT = Subjects().uapi("job", "list")
PAYLOAD = b"\x81\xa4kind\xa8job_list"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def msg(subject: str, data: bytes, headers: dict[str, str] | None) -> Msg:
    return Msg(_client=None, subject=subject, reply="", data=data, headers=headers)  # type: ignore[arg-type]


@pytest.fixture
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture
def gate(alice: Identity) -> tuple[UserGate, Clock, Identity]:
    requester = Identity.generate()
    users = {"alice": UserRecord(name="alice", role=Role.SUBMITTER, public_key=alice.public_key)}
    clock = Clock()
    return UserGate(Subjects(), requester, users.get, clock=clock), clock, requester


def refused(gate: UserGate, m: Msg) -> str:
    with pytest.raises(Refusal) as caught:
        gate.identify(m)
    assert caught.value.code == "unauthenticated"
    return caught.value.reason


def test_roles_nest_but_a_submitter_reads_only_its_own_jobs() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.SUBMITTER.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.SUBMITTER) and not Role.OPERATOR.allows(Role.ADMIN)
    assert [r for r in Role if r.reads_all_jobs] == [Role.VIEWER, Role.OPERATOR, Role.ADMIN]
    assert [r for r in Role if r.manages_all_jobs] == [Role.OPERATOR, Role.ADMIN]


def test_a_verb_no_one_declared_needs_the_operator_role() -> None:
    router = ApiRouter()
    router.roles.update(list=Role.VIEWER)
    assert router.needed("list") is Role.VIEWER
    assert router.needed("something_new") is Role.OPERATOR


def test_a_signed_request_names_its_user_and_seals_the_reply(
    gate: tuple[UserGate, Clock, Identity], alice: Identity
) -> None:
    g, clock, requester = gate
    headers = sign_request(alice, "alice", SUBJECT, PAYLOAD, now=clock.now)
    caller = g.identify(msg(SUBJECT, PAYLOAD, headers))
    assert (caller.user, caller.role, caller.actor) == ("alice", Role.SUBMITTER, "alice")
    assert caller.box == box_key(alice, requester.public_key)  # both sides derive it
    mine = UserCredential("alice", alice, requester.public_key)
    assert mine.open(seal_reply(caller.box, b"answer")) == b"answer"
    bob = UserCredential("bob", Identity.generate(), requester.public_key)
    with pytest.raises(AuthError, match="not sealed for bob"):
        bob.open(seal_reply(caller.box, b"answer"))
    # Unsealed, only a refusal of who asked is taken: it can only make a request fail.
    refusal = codec.encode(ErrorReply(code="unauthenticated", reason="no user 'bob'"))
    assert bob.open(refusal) == refusal
    with pytest.raises(AuthError):
        bob.open(codec.encode(ErrorReply(code="not_found", reason="forged")))


def test_forged_replayed_stale_and_unsigned_requests_are_refused(
    gate: tuple[UserGate, Clock, Identity], alice: Identity
) -> None:
    g, clock, _ = gate
    headers = sign_request(alice, "alice", SUBJECT, PAYLOAD, now=clock.now)
    g.identify(msg(SUBJECT, PAYLOAD, headers))
    assert refused(g, msg(SUBJECT, PAYLOAD, headers)).startswith("replayed request")
    other = sign_request(Identity.generate(), "alice", SUBJECT, PAYLOAD, now=clock.now)
    assert refused(g, msg(SUBJECT, PAYLOAD, other)) == "the signature is not alice's"
    moved = sign_request(alice, "alice", SUBJECT, PAYLOAD, now=clock.now)
    elsewhere = Subjects().uapi("job", "stop")  # the same signature on another verb
    assert refused(g, msg(elsewhere, PAYLOAD, moved)) == "the signature is not alice's"
    late = sign_request(alice, "alice", SUBJECT, PAYLOAD, now=clock.now - CLOCK_SKEW - 5)
    assert "off the requester's clock" in refused(g, msg(SUBJECT, PAYLOAD, late))
    ghost = sign_request(alice, "bob", SUBJECT, PAYLOAD, now=clock.now)
    assert refused(g, msg(SUBJECT, PAYLOAD, ghost)) == "no user 'bob' (removed, or never added)"
    assert refused(g, msg(SUBJECT, PAYLOAD, None)).startswith("a request on uapi must be signed")
    broken = dict(headers, **{"Hive-Signature": "not base64!"})
    assert refused(g, msg(SUBJECT, PAYLOAD, broken)).startswith("malformed")
    # The operator credential's subject, unsigned: the built-in admin, as before users.
    plain = g.identify(msg(Subjects().api("job", "list"), PAYLOAD, {"Hive-Actor": "ops@x"}))
    assert (plain.user, plain.role, plain.actor, plain.box) == (
        ADMIN_USER,
        Role.ADMIN,
        "ops@x",
        None,
    )
    assert g.refused == 7


def test_nonces_are_forgotten_once_the_clock_would_refuse_them(
    gate: tuple[UserGate, Clock, Identity], alice: Identity
) -> None:
    g, clock, _ = gate
    for _ in range(1000):
        g.identify(
            msg(SUBJECT, PAYLOAD, sign_request(alice, "alice", SUBJECT, PAYLOAD, now=clock.now))
        )
        clock.now += 0.5
    # What is remembered is what the window holds (2 * CLOCK_SKEW of requests), not all.
    assert len(g._seen) <= 2 * CLOCK_SKEW / 0.5 + 1


def test_the_credential_file_reads_back(tmp_path: Path, alice: Identity) -> None:
    requester = Identity.generate()
    path = tmp_path / "alice.creds.toml"
    path.write_text(user_credential_text("alice", alice.seed, requester.public_key, "user", "pw"))
    read = read_user_credential(path)
    assert read is not None and read.user == "alice"
    assert (
        read.identity.public_key == alice.public_key and read.requester_key == requester.public_key
    )
    path.write_text('[nats]\nuser = "operator"\npassword = "x"\n')
    assert read_user_credential(path) is None  # a role file: no user
    path.write_text('[hive]\nuser = "alice"\nseed = "SUnot-a-seed"\nrequester_key = "U"\n')
    with pytest.raises(ValueError, match="not a valid nkey seed"):
        read_user_credential(path)
