"""Node identity and message authentication.

A node's identity is an Ed25519 key pair, kept as an nkey seed. Registration is signed
with it. Every later node message carries a 16-byte MAC under a key that the node and
the requester each derive from their own private key and the other's public key
(X25519, the Ed25519 keys converted): no secret ever crosses the wire, a node can only
speak for itself, and checking a MAC costs about a microsecond where an Ed25519
signature check costs fifty — the heartbeat path needs the difference.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import nacl.exceptions
import nacl.public
import nacl.signing
import nkeys

SIGNATURE_BYTES = 64
MAC_BYTES = 16
_KDF_PERSON = b"hive-node-mac-1"


class AuthError(ValueError):
    """A message whose signature or MAC does not check out, or a malformed key."""


class Identity:
    """An Ed25519 key pair: a node's identity, or the requester's."""

    def __init__(self, seed: bytes) -> None:
        try:
            _, raw = nkeys.decode_seed(seed)
        except Exception as exc:  # nkeys raises its own error types and ValueError
            raise AuthError(f"not a valid nkey seed: {exc}") from None
        self._signing = nacl.signing.SigningKey(bytes(raw))
        self.seed = seed
        self.public_key = encode_public_key(bytes(self._signing.verify_key))
        self._curve = self._signing.to_curve25519_private_key()

    @classmethod
    def generate(cls) -> Identity:
        return cls(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The identity stored at `path`, creating it (mode 0600) on first use."""
        if path.exists():
            return cls(path.read_bytes().strip())
        identity = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write aside, then link into place: a crash never leaves half a seed, and of
        # two processes creating it at once, the second adopts the first one's key.
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.seed + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return cls(path.read_bytes().strip())
        finally:
            temp.unlink()
        return identity

    def sign(self, payload: bytes) -> bytes:
        """`payload` followed by its 64-byte signature."""
        return payload + self._signing.sign(payload).signature

    def message_key(self, peer_public_key: str) -> bytes:
        """The MAC key shared with the holder of `peer_public_key`."""
        try:
            theirs = nacl.signing.VerifyKey(decode_public_key(peer_public_key))
            shared = nacl.public.Box(self._curve, theirs.to_curve25519_public_key()).shared_key()
        except nacl.exceptions.CryptoError:  # a well-formed key that is no curve point
            raise AuthError("public key is not a valid Ed25519 key") from None
        # Bind both public keys, in a fixed order, so the key names this pair alone.
        pair = "".join(sorted((self.public_key, peer_public_key))).encode()
        return hashlib.blake2b(shared + pair, digest_size=32, person=_KDF_PERSON).digest()


def fingerprint(public_key: str) -> str:
    """A short, stable form of a public key for operators to compare by eye."""
    digest = hashlib.sha256(public_key.encode()).hexdigest()
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))


def open_signed(data: bytes, public_key: str) -> bytes:
    """The payload of a signed frame, when `public_key` signed it."""
    if len(data) <= SIGNATURE_BYTES:
        raise AuthError("frame too short to hold a signature")
    payload, signature = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
    try:
        nacl.signing.VerifyKey(decode_public_key(public_key)).verify(payload, signature)
    except nacl.exceptions.BadSignatureError:
        raise AuthError("signature does not match the node's key") from None
    return payload


def split_signed(data: bytes) -> bytes:
    """The payload of a signed frame, unchecked (to read the key it claims)."""
    if len(data) <= SIGNATURE_BYTES:
        raise AuthError("frame too short to hold a signature")
    return data[:-SIGNATURE_BYTES]


def seal(payload: bytes, key: bytes) -> bytes:
    """`payload` followed by its MAC under `key`."""
    return payload + _mac(payload, key)


def open_sealed(data: bytes, key: bytes) -> bytes:
    """The payload of a sealed frame, when its MAC checks out under `key`."""
    if len(data) <= MAC_BYTES:
        raise AuthError("frame too short to hold a MAC")
    payload, tag = data[:-MAC_BYTES], data[-MAC_BYTES:]
    if not hmac.compare_digest(tag, _mac(payload, key)):
        raise AuthError("MAC does not match the node's key")
    return payload


def _mac(payload: bytes, key: bytes) -> bytes:
    return hashlib.blake2b(payload, key=key, digest_size=MAC_BYTES).digest()


def encode_public_key(raw: bytes) -> str:
    data = bytes([nkeys.PREFIX_BYTE_USER]) + raw
    return base64.b32encode(data + nkeys.crc16_checksum(data)).decode().rstrip("=")


def decode_public_key(public_key: str) -> bytes:
    """The 32 raw key bytes of a `U...` public key, checking prefix and checksum."""
    try:
        padded = public_key + "=" * (-len(public_key) % 8)
        data = base64.b32decode(padded)
    except (ValueError, TypeError):
        raise AuthError("public key is not base32") from None
    if len(data) != 35 or data[0] != nkeys.PREFIX_BYTE_USER:
        raise AuthError("public key is not a node key")
    if nkeys.crc16_checksum(data[:33]) != data[33:]:
        raise AuthError("public key checksum does not match")
    return data[1:33]
