"""Serving `hive.api.<noun>.<verb>` and `hive.uapi.<noun>.<verb>`: one dispatcher for
every noun, so each verb's handler only decodes, acts and returns; who is asking (the
gate), what their role allows (each router's `roles`), errors, counters and the reply
live here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, ConnectionDrainingError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import ServiceUnavailableError

from hivectl.core import codec
from hivectl.core.api import ACTOR_HEADER
from hivectl.core.models import ErrorReply, Message
from hivectl.core.signing import USER_HEADER, seal_reply
from hivectl.core.users import ADMIN_USER, Role, article
from requester.store import StoreUnavailable

log = logging.getLogger("hive.requester.api")

REPLY_HEADROOM = 4096  # bytes kept free under max_payload for the envelope
MAX_ACTOR = 128
# Requests of one noun served at once by a requester. nats-py runs a subscription's
# callbacks one after another, so served in the callback a submit waited for every
# request ahead of it (each a KV round trip), and one slow `job list` held up all the
# submits behind it. Past this many, the subscription waits (and its queue holds the
# rest): enough to keep the store's round trips overlapped, few enough that a burst of
# heavy requests (each `job list` of thousands) does not hold heartbeats back for long.
CONCURRENT = 32
CONNECTION_GONE = (ConnectionClosedError, ConnectionDrainingError)
# A request that names no one (an older client, a hand-made request) is still recorded.
UNNAMED = "unnamed-operator"

# Who caused what the requester does now: the operator an API request names while it is
# handled, else (set when the requester starts, and so inherited by every task it
# creates) `requester:<name>`. The event sink stamps it on every event.
ACTOR: ContextVar[str] = ContextVar("hive_actor", default="")


# The user a request was verified to come from; requests over the operator NATS
# credential (and work the requester does on its own) act as the built-in admin.
USER: ContextVar[str] = ContextVar("hive_user", default=ADMIN_USER)
ROLE: ContextVar[Role] = ContextVar("hive_role", default=Role.ADMIN)


def current_actor() -> str:
    return ACTOR.get()


def current_user() -> str:
    return USER.get()


def current_role() -> Role:
    return ROLE.get()


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, as the gate verified it. `box`: the key that seals
    the reply (a user's signed request); None for a plain reply (the `api` subjects,
    which only the operator credential may publish to)."""

    user: str
    role: Role
    actor: str
    box: bytes | None = None


class Gate(Protocol):
    def identify(self, msg: Msg) -> Caller:
        """The verified caller of `msg`; Refusal("unauthenticated", why) otherwise."""
        ...


class OperatorGate:
    """A gate that knows no users: the operator credential's requests act as the
    built-in admin; every signed or `uapi` request is refused."""

    def identify(self, msg: Msg) -> Caller:
        if USER_HEADER in (msg.headers or {}) or ".uapi." in msg.subject:
            raise Refusal("unauthenticated", "this requester knows no users")
        return Caller(ADMIN_USER, Role.ADMIN, requested_by(msg))


@contextlib.contextmanager
def serving(caller: Caller) -> Iterator[None]:
    """Everything inside is done for `caller`: its user, role and audit name."""
    tokens = (USER.set(caller.user), ROLE.set(caller.role), ACTOR.set(caller.actor))
    try:
        yield
    finally:
        USER.reset(tokens[0])
        ROLE.reset(tokens[1])
        ACTOR.reset(tokens[2])


@contextlib.contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Everything inside is done on behalf of `actor` (its events name it)."""
    token = ACTOR.set(actor)
    try:
        yield
    finally:
        ACTOR.reset(token)


def requested_by(msg: Msg) -> str:
    """The operator a request names: its Hive-Actor header, made printable and short."""
    claimed = (msg.headers or {}).get(ACTOR_HEADER, "")
    shown = "".join(c for c in claimed if c.isprintable())[:MAX_ACTOR].strip()
    return shown or UNNAMED


# A handler answers with a message, or with one it already encoded (a list page is
# encoded to check its size; encoding 1,000 nodes a second time would double its cost).
Handler = Callable[[bytes], Awaitable[Message | bytes]]


class Refusal(Exception):
    """A request the requester refuses: `code` for counters, `reason` for the operator."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# What a store that cannot answer raises: it kept failing for a transient reason (a
# leader election, a full store, a connection between servers) until the store's
# deadline, or a call made without the store's retries timed out or was refused.
STORE_ERRORS: tuple[type[Exception], ...] = (
    StoreUnavailable,
    TimeoutError,
    NatsTimeoutError,
    ServiceUnavailableError,
)


def no_trouble() -> str:
    return ""


class ApiRouter:
    """Dispatches one noun's requests to `handlers` by verb; every request gets a reply.

    `roles` says which role each verb needs; a verb it does not name needs OPERATOR, so
    a new verb is never open to viewers or submitters by accident. A module adding
    verbs declares them in the same place: `router.roles.update(quota=Role.ADMIN)`.
    `gate` says who is asking (the requester sets one that knows its users).
    `store_trouble` names a known storage problem (a full disk) for the reply when the
    store does not answer; the requester sets it.
    """

    noun = "api"

    def __init__(self, concurrent: int = CONCURRENT) -> None:
        self.handlers: dict[str, Handler] = {}
        self.roles: dict[str, Role] = {}
        self.gate: Gate = OperatorGate()
        self.served = 0
        self.errors = 0
        self.store_trouble: Callable[[], str] = no_trouble
        self._slots = asyncio.Semaphore(concurrent)
        self._serving: set[asyncio.Task[None]] = set()

    def needed(self, verb: str) -> Role:
        return self.roles.get(verb, Role.OPERATOR)

    async def on_request(self, msg: Msg) -> None:
        """The subscription's callback: the request is served in a task of its own."""
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(msg), name=f"{self.noun}-request")
        self._serving.add(task)
        task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[None]) -> None:
        self._serving.discard(task)
        self._slots.release()
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if isinstance(exc, CONNECTION_GONE):  # closing: the request goes unanswered
            log.debug("%s api: no reply sent: %s", self.noun, exc)
        else:  # `_serve` answers every error it meets: this is a fault in the gate
            log.error("%s api: a request failed unanswered", self.noun, exc_info=exc)

    async def settle(self, timeout: float) -> int:
        """Wait up to `timeout` for the requests being served; how many were left."""
        if self._serving:
            _, pending = await asyncio.wait(set(self._serving), timeout=timeout)
            return len(pending)
        return 0

    async def _handle(self, msg: Msg) -> None:
        try:
            caller = self.gate.identify(msg)
        except Refusal as exc:  # answered in the clear: there is no key to seal it with
            log.debug("%s api: refused %s: %s", self.noun, msg.subject, exc.reason)
            await self._answer(msg, ErrorReply(code=exc.code, reason=exc.reason), None)
            return
        with serving(caller):
            await self._serve(msg, caller)

    async def _serve(self, msg: Msg, caller: Caller) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        handler = self.handlers.get(verb)
        try:
            if handler is None:
                raise Refusal("unknown_verb", f"no such {self.noun} operation {verb!r}")
            needed = self.needed(verb)
            if not caller.role.allows(needed):
                raise Refusal(
                    "forbidden",
                    f"{caller.user} is {article(caller.role)}: {self.noun} {verb} needs "
                    f"the {needed} role",
                )
            reply: Message | bytes = await handler(msg.data)
        except codec.CodecError as exc:
            reply = exc.reply()
        except Refusal as exc:
            reply = ErrorReply(code=exc.code, reason=exc.reason)
        except STORE_ERRORS as exc:
            reply = self._store_error(verb, exc)
        except Exception:  # never let one request take the daemon down
            log.exception("%s api %s failed", self.noun, verb)
            reply = ErrorReply(code="internal", reason="internal error in the requester")
        await self._answer(msg, reply, caller.box)

    async def _answer(self, msg: Msg, reply: Message | bytes, box: bytes | None) -> None:
        self.served += 1
        self.errors += isinstance(reply, ErrorReply)
        if msg.reply:
            data = reply if isinstance(reply, bytes) else codec.encode(reply)
            await msg.respond(data if box is None else seal_reply(box, data))

    def _store_error(self, verb: str, exc: Exception) -> ErrorReply:
        trouble = self.store_trouble()
        log.warning("%s api %s: the store did not answer (%s)", self.noun, verb, trouble or exc)
        if trouble:
            return ErrorReply(code="storage_full", reason=trouble)
        waited = f" within {exc.deadline:g}s" if isinstance(exc, StoreUnavailable) else " in time"
        return ErrorReply(
            code="store_unavailable",
            reason=f"the cluster's JetStream store did not answer{waited} (is NATS up, "
            "with JetStream enabled? on a NATS cluster, a server may be down while "
            "another takes over its streams); try again",
        )
