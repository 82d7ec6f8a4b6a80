"""Node identity, signatures on registration and MACs on every later message."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import nkeys
import pytest

from hivectl.core.auth import (
    MAC_BYTES,
    SIGNATURE_BYTES,
    AuthError,
    Identity,
    decode_public_key,
    encode_public_key,
    fingerprint,
    open_sealed,
    open_signed,
    seal,
    split_signed,
)

PUBLIC_KEY_RE = re.compile(r"^U[A-Z2-7]{55}$")  # the pattern of models.PublicKey
PAYLOAD = b"\x85\xa1v\x01\xa4kind\xa9heartbeat\xa7node_id\xa6node-1\xa3seq\x07"


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def carol() -> Identity:
    return Identity.generate()


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


# -- identity -----------------------------------------------------------------------


def test_identity_is_created_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "identity.nk"
    created = Identity.load_or_create(path)

    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().strip() == created.seed
    assert created.seed.startswith(b"SU")  # an nkey user seed

    reloaded = Identity.load_or_create(path)
    assert reloaded.public_key == created.public_key
    assert reloaded.seed == created.seed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The same key signs the same way after a reload (Ed25519 is deterministic).
    assert reloaded.sign(PAYLOAD) == created.sign(PAYLOAD)


def test_generated_identities_differ_and_match_the_wire_pattern() -> None:
    first, second = Identity.generate(), Identity.generate()
    assert first.public_key != second.public_key
    for identity in (first, second):
        assert PUBLIC_KEY_RE.match(identity.public_key)
        assert len(decode_public_key(identity.public_key)) == 32


def test_public_key_is_the_nkey_public_key(alice: Identity) -> None:
    assert alice.public_key == nkeys.from_seed(alice.seed).public_key.decode()


def test_a_corrupt_identity_file_is_an_auth_error(tmp_path: Path) -> None:
    path = tmp_path / "identity.nk"
    path.write_bytes(b"not a seed\n")
    with pytest.raises(AuthError, match="not a valid nkey seed"):
        Identity.load_or_create(path)


@pytest.mark.parametrize("seed", [b"", b"SUAAAA", b"x" * 58])
def test_bad_seeds_are_refused(seed: bytes) -> None:
    with pytest.raises(AuthError):
        Identity(seed)


# -- signatures -----------------------------------------------------------------------


def test_sign_and_open(alice: Identity) -> None:
    frame = alice.sign(PAYLOAD)
    assert len(frame) == len(PAYLOAD) + SIGNATURE_BYTES
    assert frame.startswith(PAYLOAD)
    assert open_signed(frame, alice.public_key) == PAYLOAD
    assert split_signed(frame) == PAYLOAD


def test_a_signature_by_another_key_fails(alice: Identity, bob: Identity) -> None:
    with pytest.raises(AuthError, match="signature does not match"):
        open_signed(alice.sign(PAYLOAD), bob.public_key)


@pytest.mark.parametrize("where", ["payload-start", "payload-end", "signature"])
def test_a_tampered_signed_frame_fails(alice: Identity, where: str) -> None:
    frame = alice.sign(PAYLOAD)
    index = {"payload-start": 0, "payload-end": len(PAYLOAD) - 1, "signature": -1}[where]
    with pytest.raises(AuthError):
        open_signed(flip(frame, index), alice.public_key)


def test_a_signature_moved_to_another_payload_fails(alice: Identity) -> None:
    signature = alice.sign(PAYLOAD)[-SIGNATURE_BYTES:]
    with pytest.raises(AuthError):
        open_signed(b"another payload" + signature, alice.public_key)


@pytest.mark.parametrize("size", [0, 1, SIGNATURE_BYTES - 1, SIGNATURE_BYTES])
def test_too_short_signed_frames_fail(alice: Identity, size: int) -> None:
    with pytest.raises(AuthError, match="too short"):
        open_signed(b"\x00" * size, alice.public_key)
    with pytest.raises(AuthError, match="too short"):
        split_signed(b"\x00" * size)


def test_open_signed_with_a_garbage_key_fails(alice: Identity) -> None:
    with pytest.raises(AuthError):
        open_signed(alice.sign(PAYLOAD), "Unot-a-key")


# -- message keys and MACs ------------------------------------------------------------


def test_message_key_is_shared_by_the_pair_only(
    alice: Identity, bob: Identity, carol: Identity
) -> None:
    ab = alice.message_key(bob.public_key)
    ba = bob.message_key(alice.public_key)
    assert ab == ba
    assert len(ab) == 32
    assert alice.message_key(carol.public_key) != ab
    assert carol.message_key(alice.public_key) != ab
    assert carol.message_key(bob.public_key) != ab
    assert bob.message_key(carol.public_key) == carol.message_key(bob.public_key)


def test_message_key_is_stable(alice: Identity, bob: Identity) -> None:
    again = Identity(alice.seed)
    assert again.message_key(bob.public_key) == alice.message_key(bob.public_key)


def test_seal_and_open(alice: Identity, bob: Identity) -> None:
    key = alice.message_key(bob.public_key)
    frame = seal(PAYLOAD, key)
    assert len(frame) == len(PAYLOAD) + MAC_BYTES
    assert open_sealed(frame, bob.message_key(alice.public_key)) == PAYLOAD


def test_a_frame_sealed_for_another_pair_fails(
    alice: Identity, bob: Identity, carol: Identity
) -> None:
    # Carol cannot speak for Alice to Bob: her key with Bob differs from Alice's.
    frame = seal(PAYLOAD, carol.message_key(bob.public_key))
    with pytest.raises(AuthError, match="MAC does not match"):
        open_sealed(frame, bob.message_key(alice.public_key))


@pytest.mark.parametrize("index", [0, len(PAYLOAD) // 2, len(PAYLOAD) - 1, -MAC_BYTES, -1])
def test_a_tampered_sealed_frame_fails(alice: Identity, bob: Identity, index: int) -> None:
    key = alice.message_key(bob.public_key)
    with pytest.raises(AuthError, match="MAC does not match"):
        open_sealed(flip(seal(PAYLOAD, key), index), key)


def test_a_truncated_or_extended_sealed_frame_fails(alice: Identity, bob: Identity) -> None:
    key = alice.message_key(bob.public_key)
    frame = seal(PAYLOAD, key)
    with pytest.raises(AuthError):
        open_sealed(frame[:-1], key)
    with pytest.raises(AuthError):
        open_sealed(frame + b"\x00", key)
    with pytest.raises(AuthError):
        open_sealed(frame[1:], key)


@pytest.mark.parametrize("size", [0, 1, MAC_BYTES - 1, MAC_BYTES])
def test_too_short_sealed_frames_fail(alice: Identity, bob: Identity, size: int) -> None:
    with pytest.raises(AuthError, match="too short"):
        open_sealed(b"\x00" * size, alice.message_key(bob.public_key))


# -- public keys ----------------------------------------------------------------------


def test_public_key_round_trips(alice: Identity) -> None:
    raw = decode_public_key(alice.public_key)
    assert encode_public_key(raw) == alice.public_key


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "U",
        "not base32 at all!",
        "u" + "a" * 55,  # lower case
        "Ü" + "A" * 55,
        "UAAAAAAAAAAAAAAAA",
        "U" + "A" * 56,  # one character too many
    ],
)
def test_decode_public_key_rejects_garbage(garbage: str) -> None:
    with pytest.raises(AuthError):
        decode_public_key(garbage)


def test_decode_public_key_rejects_a_wrong_checksum(alice: Identity) -> None:
    data = base64.b32decode(alice.public_key + "=" * (-len(alice.public_key) % 8))
    bad = data[:-1] + bytes([data[-1] ^ 0xFF])
    tampered = base64.b32encode(bad).decode().rstrip("=")
    with pytest.raises(AuthError, match="checksum"):
        decode_public_key(tampered)
    # A changed key byte breaks the checksum too.
    changed = base64.b32encode(flip(data, 10)).decode().rstrip("=")
    with pytest.raises(AuthError, match="checksum"):
        decode_public_key(changed)


def test_decode_public_key_rejects_other_key_types(alice: Identity) -> None:
    raw = decode_public_key(alice.public_key)
    for prefix in (nkeys.PREFIX_BYTE_SERVER, nkeys.PREFIX_BYTE_ACCOUNT):
        data = bytes([prefix]) + raw
        other = base64.b32encode(data + nkeys.crc16_checksum(data)).decode().rstrip("=")
        with pytest.raises(AuthError, match="not a node key"):
            decode_public_key(other)
    with pytest.raises(AuthError):
        decode_public_key(alice.seed.decode())  # the seed is not a public key


def test_fingerprint_is_stable_and_short(alice: Identity, bob: Identity) -> None:
    first = fingerprint(alice.public_key)
    assert first == fingerprint(alice.public_key)
    assert first == fingerprint(Identity(alice.seed).public_key)
    assert re.fullmatch(r"[0-9a-f]{4}(:[0-9a-f]{4}){3}", first)
    assert fingerprint(bob.public_key) != first
