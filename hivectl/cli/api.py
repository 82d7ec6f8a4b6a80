"""Talking to the requester: one NATS connection per command, and the API calls on it.

A command makes a single request with `call`:

    reply = call(ctx, "node", "get", NodeGetRequest(id=i), NodeGetReply)

or, for several requests over one connection, hands `run_api` its work:

    async def work(api: Api) -> list[NodeView]: ...
    nodes = run_api(ctx, work, status="Listing nodes")

Every expected failure on the way (NATS unreachable, nobody answering, an error reply,
an unreadable reply, a `CliError` the work raises) ends the program with one line
`Error: ...` on stderr and a non-zero exit status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext, suppress
from typing import TypeVar

import typer
from nats.aio.client import Client
from nats.errors import Error as NatsError

from hivectl.cli.common import EXIT_ERROR, client_config, debug, fail, global_options, spinner
from hivectl.core.bus import (
    BusError,
    NoAnswer,
    RemoteError,
    ask,
    connect_cli,
    connection_failure,
    read_reply,
)
from hivectl.core.codec import CodecError
from hivectl.core.config import ClientConfig
from hivectl.core.models import Message
from hivectl.core.subjects import Subjects

T = TypeVar("T")
M = TypeVar("M", bound=Message)


class CliError(Exception):
    """An expected failure found inside `run_api` work: reported as one line."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Api:
    """One open connection to NATS and the requester's API on it."""

    def __init__(self, ctx: typer.Context, nc: Client, cfg: ClientConfig) -> None:
        self.ctx = ctx
        self.nc = nc
        self.cfg = cfg
        self.subjects = Subjects(cfg.nats.prefix)

    async def call(self, noun: str, verb: str, message: Message, expect: type[M]) -> M:
        """One request to `<prefix>.api.<noun>.<verb>`; errors raise, `run_api` reports."""
        return self.read(noun, verb, await self.ask(noun, verb, message), expect)

    async def ask(self, noun: str, verb: str, message: Message) -> bytes:
        """The request alone: the reply's bytes, for `read` (paging peeks in between)."""
        subject = self.subjects.api(noun, verb)
        started = time.perf_counter()
        data = await ask(self.nc, subject, message, timeout=self.cfg.timeout)
        elapsed = (time.perf_counter() - started) * 1000
        debug(self.ctx, f"{subject} {message.kind}: {len(data)} bytes in {elapsed:.1f}ms")
        return data

    def read(self, noun: str, verb: str, data: bytes, expect: type[M]) -> M:
        return read_reply(self.subjects.api(noun, verb), data, expect)


def run_api(
    ctx: typer.Context, work: Callable[[Api], Awaitable[T]], *, status: str | None = None
) -> T:
    """Connect, run `work`, close; expected failures become one-line errors."""
    cfg = client_config(ctx)
    try:
        with spinner(status) if status else nullcontext():
            return asyncio.run(_connected(ctx, cfg, work))
    except BusError as exc:
        from hivectl.cli.problems import explain

        fail(*explain(exc, global_options(ctx), cfg))
    except RemoteError as exc:
        detail = f" ({exc.code})" if global_options(ctx).verbose else ""
        fail(f"{exc.reason or exc.code}{detail}")
    except CodecError as exc:
        fail(f"unreadable reply from the requester: {exc.reason}")
    except CliError as exc:
        fail(str(exc), exc.code)


async def _connected(
    ctx: typer.Context, cfg: ClientConfig, work: Callable[[Api], Awaitable[T]]
) -> T:
    debug(ctx, f"connecting to {cfg.nats.url}")
    api = Api(ctx, await connect_cli(cfg.nats), cfg)
    try:
        return await work(api)
    except (NatsError, NoAnswer) as exc:
        # Whatever the wait was (a reply, the next log line, a job's end), a connection
        # that broke under it is one line, the same for every command.
        if isinstance(exc, NoAnswer) and not api.nc.is_closed:
            raise
        raise BusError(connection_failure(cfg.nats.url, exc, closed=api.nc.is_closed)) from None
    finally:
        with suppress(NatsError, OSError):  # closing a broken connection is no news
            await api.nc.close()  # the work may have connected again (a retried submit)


def call(ctx: typer.Context, noun: str, verb: str, message: Message, expect: type[M]) -> M:
    """A single request/reply with the requester."""

    async def work(api: Api) -> M:
        return await api.call(noun, verb, message, expect)

    return run_api(ctx, work)
