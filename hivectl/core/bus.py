"""Connecting to NATS: daemons hold on forever, the CLI fails fast with one line.

Also the one request helper every client uses, so "nobody answered" and "the answer
was an error" read the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.errors import (
    ConnectionClosedError,
    MaxPayloadError,
    NoRespondersError,
    NoServersError,
    OutboundBufferLimitError,
    SlowConsumerError,
    StaleConnectionError,
)
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError

from hivectl.core import codec
from hivectl.core.config import NatsSettings
from hivectl.core.credentials import read_credentials_file
from hivectl.core.errors import HiveError, remote_error
from hivectl.core.errors import RemoteError as RemoteError  # callers import it from here too
from hivectl.core.models import ErrorReply, Message

log = logging.getLogger("hive.bus")
ERROR_LOG_EVERY = 60.0
M = TypeVar("M", bound=Message)


class BusError(HiveError, RuntimeError):
    """NATS could not be reached, or nobody answered: the message is one line for a person."""


class CredentialsError(BusError):
    """The configured credentials file is missing or unreadable."""


# Why a connection failed, and what to look at (callers with more context say more).
REFUSED, TIMED_OUT, UNAUTHORIZED = "connection refused", "timed out", "authorization failed"
_HINTS = {
    REFUSED: "is the requester or nats-server running?",
    TIMED_OUT: "is it a NATS server?",
    UNAUTHORIZED: "check the credentials",
}


class NatsUnreachable(BusError):
    """No connection to NATS at `url`; `reason` is REFUSED, TIMED_OUT, UNAUTHORIZED or
    what nats-py said."""

    def __init__(self, url: str, reason: str) -> None:
        hint = f" ({_HINTS[reason]})" if reason in _HINTS else ""
        super().__init__(f"cannot reach NATS at {url}: {reason}{hint}")
        self.url = url
        self.reason = reason


class NoResponder(BusError):
    """Nobody listens on `subject`: for the API, no requester is connected to this NATS."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"no requester is answering on {subject}")
        self.subject = subject


class NoAnswer(BusError):
    """A responder exists but sent nothing within `timeout` seconds: the request went
    out, and may or may not have been acted on."""

    def __init__(self, subject: str, timeout: float) -> None:
        super().__init__(f"no answer on {subject} within {timeout:g}s")
        self.subject = subject
        self.timeout = timeout


def _credentials(settings: NatsSettings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.token is not None:
        options["token"] = settings.token.get_secret_value()
    if settings.user is not None:
        options["user"] = settings.user
        options["password"] = settings.password.get_secret_value() if settings.password else ""
    if settings.creds_file is not None:
        options["user_credentials"] = str(settings.creds_file)
    if settings.credentials_file is not None:
        try:
            user, password = read_credentials_file(settings.credentials_file)
        except ValueError as exc:
            raise CredentialsError(str(exc)) from None
        options["user"], options["password"] = user, password
    return options


async def connect_daemon(
    settings: NatsSettings, name: str, *, auth_hint: str = "", inbox_prefix: str = "_INBOX"
) -> Client:
    """A connection that reconnects forever and drains on close, for the daemons.

    Each kind of failure is logged once a minute while it lasts. A refused
    authorization is one line that says which credentials went and, from `auth_hint`,
    what to give instead: retrying cannot fix that, the operator must. Replies to this
    connection's requests come to `inbox_prefix` subjects.
    """

    last_logged: dict[str, float] = {}

    async def on_error(exc: Exception) -> None:
        # While NATS is down every retry fails the same way: say so once a minute.
        text = str(exc) or type(exc).__name__
        now = time.monotonic()
        if now - last_logged.get(text, -ERROR_LOG_EVERY) >= ERROR_LOG_EVERY:
            last_logged[text] = now
            if _is_auth_failure(text):
                log.error("nats: %s", auth_failure(settings, auth_hint))
            else:
                retrying = "" if nc.is_connected else "; retrying"
                log.warning("nats: %s: %s%s", settings.url, text.removeprefix("nats: "), retrying)

    async def on_disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):  # a deliberate close is no news
            log.warning("nats: disconnected from %s; reconnecting", settings.url)

    async def on_reconnected() -> None:
        log.info("nats: reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")

    nc = Client()
    try:
        await nc.connect(
            servers=settings.url.split(","),
            name=name,
            connect_timeout=max(1, int(settings.connect_timeout)),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            ping_interval=20,
            max_outstanding_pings=3,
            drain_timeout=10,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            inbox_prefix=inbox_prefix,
            **_credentials(settings),
        )
    except BaseException:  # cancelled while retrying (a daemon told to stop): tidy up
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    return nc


def _is_auth_failure(text: str) -> bool:
    return "authorization" in text.lower()


def auth_failure(settings: NatsSettings, hint: str) -> str:
    """One line on a refused authorization: the server, what we gave, what to do."""
    if settings.credentials_file is not None:
        given = f"the credentials in {settings.credentials_file}"
    elif settings.creds_file is not None:
        given = f"the credentials in {settings.creds_file}"
    elif settings.user is not None:
        given = f"user {settings.user!r}"
    elif settings.token is not None:
        given = "a token"
    else:
        given = "no credentials"
    line = f"{settings.url} refused the connection (authorization violation) with {given}"
    return f"{line}; {hint}" if hint else line


async def connect_cli(settings: NatsSettings, name: str = "hivectl") -> Client:
    """A connection that gives up at once with a readable reason, for hivectl."""

    seen: list[Exception] = []

    async def remember(exc: Exception) -> None:  # surfaces in the BusError below
        seen.append(exc)

    timeout = max(1.0, settings.connect_timeout)
    nc = Client()
    try:
        async with asyncio.timeout(timeout * 2 + 1):
            # nats-py only stops trying a server once its attempts exceed a positive
            # max_reconnect_attempts (0 loops forever), so: one retry, no wait.
            await nc.connect(
                servers=settings.url.split(","),
                name=name,
                connect_timeout=int(timeout),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                error_cb=remember,
                **_credentials(settings),
            )
            return nc
    except (OSError, NatsError, TimeoutError) as exc:
        cause = seen[-1] if isinstance(exc, NoServersError) and seen else exc
        raise NatsUnreachable(settings.url, _reason(cause)) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, TimeoutError):
        return TIMED_OUT
    text = str(exc).strip()
    if "Authorization" in text or "authorization" in text:
        return UNAUTHORIZED
    return text or type(exc).__name__


def connection_failure(url: str, exc: BaseException, *, closed: bool) -> str:
    """One line for what went wrong on a connection that was open: `exc` is a nats-py
    error (or a NoReply), `closed` whether the connection is gone by now.

    A connection hivectl holds closes when the server goes (with the embedded server,
    when the requester does): every wait then ends in ConnectionClosedError, or in a
    request that is never answered.
    """
    if closed or isinstance(exc, ConnectionClosedError | StaleConnectionError):
        why = "the server stopped answering" if isinstance(exc, StaleConnectionError) else ""
        return (
            f"lost the connection to NATS at {url}: {why or 'connection closed'} "
            "(is the requester running?)"
        )
    if isinstance(exc, BusError):  # said already, in words for a person
        return str(exc)
    if isinstance(exc, MaxPayloadError):
        return f"NATS at {url} refused a message larger than its max_payload"
    if isinstance(exc, OutboundBufferLimitError):
        return f"NATS at {url} takes data slower than hivectl sends it (outbound buffer full)"
    if isinstance(exc, SlowConsumerError):
        return f"NATS at {url} sent messages faster than hivectl could read them"
    if isinstance(exc, NatsTimeoutError | TimeoutError):
        return f"NATS at {url} did not answer in time"
    if isinstance(exc, APIError):
        return f"JetStream at {url}: {exc.description or exc.code}"
    if isinstance(exc, NoRespondersError):
        return f"nobody answered a request on NATS at {url} (is the requester running?)"
    text = str(exc).strip().removeprefix("nats: ") or type(exc).__name__
    return f"NATS at {url}: {' '.join(text.split())}"


async def request(
    nc: Client,
    subject: str,
    message: Message,
    expect: type[M],
    timeout: float,
) -> M:
    """Send `message`, return the reply as `expect`; raise BusError or RemoteError."""
    return read_reply(subject, await ask(nc, subject, message, timeout), expect)


async def ask(
    nc: Client,
    subject: str,
    message: Message | bytes,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> bytes:
    """Send `message` (or what it encoded to) and return the reply undecoded (see
    `read_reply`); raise BusError."""
    payload = message if isinstance(message, bytes) else codec.encode(message)
    try:
        reply = await nc.request(subject, payload, timeout=timeout, headers=headers)
    except NoRespondersError:
        raise NoResponder(subject) from None
    except (NatsTimeoutError, TimeoutError):
        raise NoAnswer(subject, timeout) from None
    return reply.data


def read_reply(subject: str, data: bytes, expect: type[M]) -> M:
    """A reply to a request on `subject` as `expect`; raise BusError or RemoteError."""
    try:
        answer: Message = codec.decode(data, (expect, ErrorReply))
    except codec.CodecError as exc:
        raise BusError(f"unreadable reply on {subject}: {exc.reason}") from None
    if isinstance(answer, ErrorReply):
        raise remote_error(answer.code, answer.reason)
    assert isinstance(answer, expect)
    return answer


async def close_gently(nc: Client, flush_timeout: float) -> None:
    """Flush what is buffered (a daemon's last words), then drain; never raise on the
    way out: a connection that is already gone has nothing more to say."""
    try:
        await nc.flush(timeout=max(1, int(flush_timeout)))  # nats-py wants whole seconds
    except Exception as exc:
        log.debug("flush on close failed: %s", exc)
    try:
        await nc.drain()
    except Exception as exc:
        log.debug("drain on close failed: %s", exc)
    if not nc.is_closed:
        await nc.close()
