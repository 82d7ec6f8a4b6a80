"""Enrollment tokens: pre-authorised joining (`hivectl node token create`).

A token is `<id>.<secret>`: the id names its record in the tokens bucket, the secret
(32 random bytes) proves it. Only the SHA-256 of the secret is stored, so reading the
bucket gives nobody a token (the secret has 256 bits: a fast hash is enough, nothing
can be guessed). hivectl makes the secret itself and sends the requester only the
hash: a reply would travel on `_INBOX.>`, where compute credentials may listen, while
requests to `hive.api.>` reach no one but the requesters.

An agent started with a token sends it with its registration; a valid one approves the
node and gives it the token's labels (as operator labels), and spends one use by
compare-and-set on the token's record, so two registrations at once never overspend it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field, Strict, StringConstraints

from hivectl.core.models import (
    Labels,
    Message,
    Model,
    NonNegInt,
    Reason,
    ShortText,
    register_messages,
    utcnow,
)

TOKEN_ID_PATTERN = r"^t-[0-9a-f]{12}$"
TokenId = Annotated[str, StringConstraints(strict=True, pattern=TOKEN_ID_PATTERN)]
TokenIdPrefix = Annotated[str, StringConstraints(strict=True, pattern=r"^t(-[0-9a-f]{0,12})?$")]
TokenHash = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]
SECRET_BYTES = 32
MAX_LISTED = 1000  # tokens one list reply carries, newest first
_TOKEN = re.compile(r"^(t-[0-9a-f]{12})\.([A-Za-z0-9_-]{43})$")


def new_token() -> tuple[str, str, str]:
    """(id, the token to hand out, the hash of its secret to store)."""
    token_id = f"t-{secrets.token_hex(6)}"
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return token_id, f"{token_id}.{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token; None for anything else."""
    match = _TOKEN.match(token.strip())
    return (match[1], match[2]) if match else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def token_id_of(token: str) -> str:
    """The id part of whatever was given as a token, for messages ('' if none)."""
    parts = split_token(token)
    return parts[0] if parts else ""


class TokenInfo(Model):
    """A token as operators see it: everything but the hash (and never the secret)."""

    token_id: TokenId
    created_at: datetime = Field(default_factory=utcnow)
    created_by: ShortText = ""
    expires_at: datetime | None = None  # None: never
    uses: NonNegInt = 1  # registrations it may approve; 0: any number until it expires
    used: NonNegInt = 0
    labels: Labels = Field(default_factory=dict)
    note: ShortText = ""
    revoked_at: datetime | None = None
    revoked_by: ShortText = ""

    def uses_left(self) -> int | None:
        """None: no limit."""
        return None if self.uses == 0 else max(0, self.uses - self.used)

    def state(self, now: datetime) -> Literal["active", "revoked", "expired", "used up"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if self.uses_left() == 0:
            return "used up"
        return "active"

    def problem(self, now: datetime) -> str:
        """Why the token approves nothing now; '' when it is good for another use."""
        name = f"enrollment token {self.token_id}"
        state = self.state(now)
        if state == "revoked":
            by = f" by {self.revoked_by}" if self.revoked_by else ""
            return f"{name} was revoked{by} at {_utc(self.revoked_at)}"
        if state == "expired":
            return f"{name} expired at {_utc(self.expires_at)}"
        if state == "used up":
            return f"{name} is used up ({self.used} of {self.uses} uses)"
        return ""


def _utc(when: datetime | None) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC" if when is not None else "-"


class TokenRecord(TokenInfo):
    """A token as the requester stores it in the tokens bucket."""

    hash: TokenHash

    def info(self) -> TokenInfo:
        return TokenInfo.model_validate(self.model_dump(exclude={"hash"}))


class TokenCreateRequest(Message):
    kind: ClassVar[str] = "token_create"
    token_id: TokenId
    hash: TokenHash
    ttl: Annotated[float, Strict(), Field(ge=0, le=10 * 365 * 86400.0, allow_inf_nan=False)]
    uses: NonNegInt = 1
    labels: Labels = Field(default_factory=dict)
    note: ShortText = ""


class TokenCreateReply(Message):
    kind: ClassVar[str] = "token_create_reply"
    token: TokenInfo


class TokenListRequest(Message):
    kind: ClassVar[str] = "token_list"


class TokenListReply(Message):
    kind: ClassVar[str] = "token_list_reply"
    tokens: Annotated[list[TokenInfo], Field(max_length=MAX_LISTED)]
    more: NonNegInt = 0  # older tokens left out


class TokenRevokeRequest(Message):
    kind: ClassVar[str] = "token_revoke"
    id: TokenIdPrefix
    reason: Reason = ""


class TokenEvent(Message):
    """Published on `hive.events.token.<id>` (and kept in HIVE_EVENTS) when an operator
    creates or revokes a token; each node it approves has its own node event."""

    kind: ClassVar[str] = "token_event"
    token_id: TokenId
    event: Literal["created", "revoked"]
    old: ShortText = ""
    new: ShortText = ""
    reason: Reason = ""
    at: datetime = Field(default_factory=utcnow)
    actor: ShortText = ""


register_messages(
    TokenCreateRequest,
    TokenCreateReply,
    TokenListRequest,
    TokenListReply,
    TokenRevokeRequest,
    TokenEvent,
)
