"""Enrollment tokens on the requester: the tokens bucket, its API verbs
(`hive.api.node.token_{create,list,revoke}`) and what a registration with a token gets.

A token approves a node only at registration, only a new or PENDING one (an operator's
reject stands, an approved node spends nothing), and spends one use by compare-and-set
on the token's record, so registrations racing on several requesters never overspend
it. See hivectl/core/tokens.py for the token itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from hivectl.core import codec
from hivectl.core.api import TOKEN_CREATE, TOKEN_LIST, TOKEN_REVOKE
from hivectl.core.labels import LabelEditError, check_operator_labels
from hivectl.core.models import Approval, Message, NodeRecord, OkReply, RegisterRequest, utcnow
from hivectl.core.tokens import (
    MAX_LISTED,
    TokenCreateReply,
    TokenCreateRequest,
    TokenEvent,
    TokenListReply,
    TokenListRequest,
    TokenRecord,
    TokenRevokeRequest,
    secret_matches,
    split_token,
)
from requester.kvview import KvView
from requester.nodes.registry import Registry
from requester.routing import Handler, Refusal, acting_as, current_actor
from requester.store import Store

log = logging.getLogger("hive.requester.tokens")
TokenSink = Callable[[TokenEvent], Awaitable[None]]


class TokenError(Refusal):
    """A token request the requester refuses."""


@dataclass(frozen=True)
class Verdict:
    """What a token presented at registration gets the node."""

    approved: bool
    reason: str  # why it was approved (which token), or why not
    labels: dict[str, str] = field(default_factory=dict)
    actor: str = ""  # who approved it: `token:<id>`


class Tokens:
    def __init__(self, bucket: str, on_event: TokenSink, limits: codec.Limits) -> None:
        self._on_event = on_event
        self._limits = limits
        self._view: KvView[TokenRecord] = KvView(
            bucket, TokenRecord, noun="token", error=TokenError
        )

    async def start(self, js: Store) -> None:
        await self._view.start(js)

    async def close(self) -> None:
        await self._view.close()

    def get(self, token_id: str) -> TokenRecord | None:
        return self._view.get(token_id)

    def handlers(self) -> dict[str, Handler]:
        """The verbs this module serves on the node API router."""
        return {TOKEN_CREATE: self.create, TOKEN_LIST: self.list_tokens, TOKEN_REVOKE: self.revoke}

    # -- API verbs ------------------------------------------------------------------------
    async def create(self, data: bytes) -> Message:
        request = codec.decode(data, TokenCreateRequest, self._limits)
        try:
            check_operator_labels(list(request.labels))
        except LabelEditError as exc:
            raise TokenError("invalid", str(exc)) from None
        now = utcnow()
        record = TokenRecord(
            token_id=request.token_id,
            hash=request.hash,
            created_at=now,
            created_by=current_actor(),
            expires_at=now + timedelta(seconds=request.ttl) if request.ttl else None,
            uses=request.uses,
            labels=request.labels,
            note=request.note,
        )
        if not await self._view.create(record.token_id, record):
            raise TokenError("conflict", f"token id {record.token_id} is taken; create again")
        terms = _terms(record)
        reason = f"{terms}: {request.note}" if request.note else terms
        await self._on_event(
            TokenEvent(token_id=record.token_id, event="created", new="active", reason=reason)
        )
        return TokenCreateReply(token=record.info())

    async def list_tokens(self, data: bytes) -> Message:
        codec.decode(data, TokenListRequest, self._limits)
        records = sorted(self._view.values(), key=lambda r: r.created_at, reverse=True)
        shown = [record.info() for record in records[:MAX_LISTED]]
        return TokenListReply(tokens=shown, more=max(0, len(records) - MAX_LISTED))

    async def revoke(self, data: bytes) -> Message:
        request = codec.decode(data, TokenRevokeRequest, self._limits)
        token_id = self._view.resolve(request.id)
        actor = current_actor()

        def apply(record: TokenRecord) -> TokenRecord | None:
            if record.revoked_at is not None:
                return None  # revoked already: nothing changes, nothing to say
            return record.model_copy(update={"revoked_at": utcnow(), "revoked_by": actor})

        changed = await self._view.change(token_id, apply)
        if changed is None:
            raise TokenError("not_found", f"token {request.id!r} not found")
        before, after = changed
        if before is not after:
            old = before.state(utcnow())
            event = TokenEvent(
                token_id=token_id, event="revoked", old=old, new="revoked", reason=request.reason
            )
            await self._on_event(event)
        return OkReply(id=token_id)

    # -- registration ---------------------------------------------------------------------
    async def admit(
        self, registry: Registry, request: RegisterRequest, auto_approve: bool
    ) -> NodeRecord:
        """Register a node that presented a token: APPROVED with the token's labels if it
        is good, else PENDING (unless `auto_approve`) with the reason on the record."""
        existing = registry.get(request.node_id)
        if existing is not None:
            registry.check_key(existing, request.public_key)
            if existing.approval is not Approval.PENDING:  # spend nothing
                return await registry.update_info(request.node_id, request.info)
        verdict = await self.redeem(request.token)
        log.info(
            "node %s presented %s",
            request.node_id,
            verdict.reason,
            extra={"node_id": request.node_id},
        )
        who = acting_as(verdict.actor) if verdict.actor else contextlib.nullcontext()
        with who:
            if existing is None:
                return await registry.register(
                    request.node_id,
                    request.public_key,
                    request.info,
                    verdict.approved or auto_approve,
                    reason=verdict.reason,
                    operator_labels=verdict.labels,
                )
            await registry.update_info(request.node_id, request.info)
            return await registry.enroll(
                request.node_id, verdict.approved, verdict.reason, verdict.labels
            )

    async def redeem(self, token: str) -> Verdict:
        """Spend one use of `token` if it is good now; the verdict says what it gets."""
        parts = split_token(token)
        if parts is None:
            return Verdict(False, "an enrollment token that is malformed (expected <id>.<secret>)")
        token_id, secret = parts
        record = self._view.get(token_id)
        if record is None or not secret_matches(secret, record.hash):
            return Verdict(False, f"enrollment token {token_id} is not valid (unknown, or wrong)")
        refusal = ""

        def spend(current: TokenRecord) -> TokenRecord | None:
            nonlocal refusal
            refusal = current.problem(utcnow())
            return None if refusal else current.model_copy(update={"used": current.used + 1})

        try:
            changed = await self._view.change(token_id, spend)
        except TokenError as exc:  # kept losing races: the node may register again
            return Verdict(False, f"enrollment token {token_id}: {exc.reason}")
        if changed is None:
            return Verdict(False, f"enrollment token {token_id} is not valid (unknown, or wrong)")
        if refusal:
            return Verdict(False, refusal)
        spent = changed[1]
        of = f"{spent.uses}" if spent.uses else "unlimited"
        by = f", created by {spent.created_by}" if spent.created_by else ""
        reason = f"enrollment token {token_id} (use {spent.used} of {of}{by})"
        return Verdict(True, reason, dict(spent.labels), f"token:{token_id}")


def _terms(record: TokenRecord) -> str:
    """What a token allows, in words, for its `created` event."""
    uses = f"{record.uses} uses" if record.uses else "unlimited uses"
    expiry = (
        f"expires {record.expires_at:%Y-%m-%d %H:%M:%S} UTC" if record.expires_at else "no expiry"
    )
    labels = ",".join(f"{k}={v}" for k, v in sorted(record.labels.items()))
    return f"{uses}, {expiry}" + (f", labels {labels}" if labels else "")
