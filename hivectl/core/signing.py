"""Signed requests and sealed replies: how a user proves who it is to the requester.

A user's request goes to `<prefix>.uapi.<noun>.<verb>` with four headers: Hive-User
(its name), Hive-Time (unix seconds), Hive-Nonce (random) and Hive-Signature (Ed25519,
base64, over the subject, the user, the time, the nonce and the SHA-256 of the payload).
The requester checks it against the user's public key from the users bucket, the clock
(±CLOCK_SKEW) and the nonces it has seen within that window, so a request can be
neither forged under another name nor replayed.

Every NATS connection of the `user` role may listen on `_INBOX.>`, where replies
travel, so the requester seals its reply to a signed request for that user alone: a
SecretBox (XSalsa20-Poly1305) under a key both sides derive from their own private key
and the other's public key (X25519, as node MACs are derived), never sent. A reply that
does not open was not written for this user by a requester of this cluster.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.signing

from hivectl.core import codec
from hivectl.core.auth import AuthError, Identity, decode_public_key
from hivectl.core.models import ErrorReply

USER_HEADER = "Hive-User"
TIME_HEADER = "Hive-Time"
NONCE_HEADER = "Hive-Nonce"
SIGNATURE_HEADER = "Hive-Signature"
UNAUTHENTICATED = "unauthenticated"  # the code of a refusal of who asked
CLOCK_SKEW = 60.0  # seconds a request's time may be off the requester's clock
NONCE_BYTES = 16
_BOX_PERSON = b"hive-user-box-1"


def signed_bytes(subject: str, user: str, stamp: str, nonce: str, payload: bytes) -> bytes:
    """What a signature covers: every header that matters and the payload's digest."""
    digest = hashlib.sha256(payload).hexdigest()
    return "\n".join((subject, user, stamp, nonce, digest)).encode()


def sign_request(
    identity: Identity, user: str, subject: str, payload: bytes, now: float | None = None
) -> dict[str, str]:
    """The headers that make `payload` on `subject` a request from `user`."""
    stamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(NONCE_BYTES)
    signed = identity.sign(signed_bytes(subject, user, stamp, nonce, payload))
    signature = base64.b64encode(signed[-64:]).decode()
    return {USER_HEADER: user, TIME_HEADER: stamp, NONCE_HEADER: nonce, SIGNATURE_HEADER: signature}


@dataclass(frozen=True)
class SignedClaim:
    """What a signed request says about itself, not yet checked against a key."""

    user: str
    stamp: int
    nonce: str
    signature: bytes


def read_claim(headers: Mapping[str, str]) -> SignedClaim:
    """The claim of a request's headers; AuthError naming what is missing or malformed."""
    user = headers.get(USER_HEADER, "")
    missing = [h for h in (TIME_HEADER, NONCE_HEADER, SIGNATURE_HEADER) if not headers.get(h)]
    if not user or missing:
        raise AuthError(f"a signed request needs the headers {', '.join(missing or [USER_HEADER])}")
    try:
        stamp = int(headers[TIME_HEADER])
        signature = base64.b64decode(headers[SIGNATURE_HEADER], validate=True)
    except (ValueError, binascii.Error):
        raise AuthError("malformed Hive-Time or Hive-Signature header") from None
    nonce = headers[NONCE_HEADER]
    if len(signature) != 64 or len(nonce) > 64 or len(user) > 64:
        raise AuthError("malformed signature, nonce or user header")
    return SignedClaim(user, stamp, nonce, signature)


def verify_key(public_key: str) -> nacl.signing.VerifyKey:
    """The key that checks `public_key`'s signatures (decoding it costs half a check:
    a verifier keeps it)."""
    return nacl.signing.VerifyKey(decode_public_key(public_key))


def verify_claim(
    claim: SignedClaim, key: nacl.signing.VerifyKey, subject: str, payload: bytes
) -> None:
    """AuthError unless the holder of `key` signed this claim for this request."""
    signed = signed_bytes(subject, claim.user, str(claim.stamp), claim.nonce, payload)
    try:
        key.verify(signed, claim.signature)
    except nacl.exceptions.BadSignatureError:
        raise AuthError(f"the signature is not {claim.user}'s") from None


def box_key(identity: Identity, peer_public_key: str) -> bytes:
    """The key that seals replies between `identity` and the holder of the peer key;
    the same on both sides, and not the key of any node MAC."""
    shared = identity.message_key(peer_public_key)
    return hashlib.blake2b(shared, digest_size=32, person=_BOX_PERSON).digest()


def seal_reply(key: bytes, data: bytes) -> bytes:
    return bytes(nacl.secret.SecretBox(key).encrypt(data))


def open_reply(key: bytes, data: bytes) -> bytes:
    """The reply a sealed frame holds; AuthError when it does not open under `key`."""
    try:
        return bytes(nacl.secret.SecretBox(key).decrypt(data))
    except (nacl.exceptions.CryptoError, ValueError):
        raise AuthError("the reply is not sealed for this user") from None


# -- the user's credential file -----------------------------------------------------------


@dataclass(frozen=True)
class UserCredential:
    """The `[hive]` section of a user's credential file."""

    user: str
    identity: Identity
    requester_key: str

    @cached_property
    def box(self) -> bytes:
        return box_key(self.identity, self.requester_key)

    def sign(self, subject: str, payload: bytes) -> dict[str, str]:
        """The headers that make `payload` on `subject` this user's request."""
        return sign_request(self.identity, self.user, subject, payload)

    def opened(self, subject: str, data: bytes) -> bytes:
        """`open`, with what does not open as the one-line BusError hivectl prints."""
        from hivectl.core.bus import BusError

        try:
            return self.open(data)
        except AuthError as exc:
            raise BusError(f"the reply on {subject}: {exc}") from None

    def open(self, data: bytes) -> bytes:
        """A reply to this user, opened. A refusal of who we are comes in the clear
        (the requester had no key to seal it with), and it alone is taken unsealed: it
        can only make a request fail, never stand for an answer. AuthError otherwise."""
        try:
            return open_reply(self.box, data)
        except AuthError:
            pass
        try:
            refusal = codec.decode(data, ErrorReply)
        except codec.CodecError:
            refusal = None
        if isinstance(refusal, ErrorReply) and refusal.code == UNAUTHENTICATED:
            return data
        raise AuthError(
            f"not sealed for {self.user} (its requester is not the one whose key "
            "the credential file names, or someone else answered)"
        )


def read_user_credential(path: Path) -> UserCredential | None:
    """The user a credentials file names (None for a role file with no `[hive]`);
    ValueError with the reason when it is there but unusable."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read credentials file {path}: {exc}") from None
    section = data.get("hive")
    if section is None:
        return None
    user, seed, key = section.get("user"), section.get("seed"), section.get("requester_key")
    if not all(isinstance(v, str) and v for v in (user, seed, key)):
        raise ValueError(f"credentials file {path}: [hive] needs user, seed and requester_key")
    assert isinstance(user, str) and isinstance(seed, str) and isinstance(key, str)
    try:
        identity = Identity(seed.encode())
        credential = UserCredential(user, identity, key)
        assert credential.box  # a requester key that is no key fails here, not later
    except AuthError as exc:
        raise ValueError(f"credentials file {path}: {exc}") from None
    return credential


def user_credential_text(
    user: str, seed: bytes, requester_key: str, nats_user: str, nats_password: str
) -> str:
    """A user's credential file, as `hivectl user add` writes it."""
    return (
        f"# Hive credentials of user {user!r}. Keep this file private: whoever holds it\n"
        f"# acts as {user}. Use it with: hivectl --config <file with [nats] credentials_file>\n"
        f"# or HIVE_NATS__CREDENTIALS_FILE=<this file>.\n"
        f'[nats]\nuser = "{nats_user}"\npassword = "{nats_password}"\n\n'
        f'[hive]\nuser = "{user}"\nseed = "{seed.decode()}"\n'
        f'requester_key = "{requester_key}"\n'
    )


def write_new_file(path: Path, text: str) -> None:
    """Write `text` to a new file, mode 0600; FileExistsError if `path` exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
