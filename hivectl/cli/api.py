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
from collections.abc import Awaitable, Callable
from contextlib import nullcontext, suppress
from typing import TypeVar

import typer
from nats.aio.client import Client
from nats.errors import Error as NatsError

from hivectl.cli.common import EXIT_ERROR, client_config, debug, fail, global_options, spinner
from hivectl.core import paging
from hivectl.core.bus import BusError, NoAnswer, RemoteError, connection_failure, read_reply
from hivectl.core.client import AsyncClient
from hivectl.core.codec import CodecError
from hivectl.core.config import ClientConfig
from hivectl.core.errors import HiveError
from hivectl.core.models import Message

T = TypeVar("T")
M = TypeVar("M", bound=Message)


class CliError(Exception):
    """An expected failure found inside `run_api` work: reported as one line."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Api:
    """One open connection to NATS and the requester's API on it: an AsyncClient (the
    Python client's), so hivectl and scripts make the same requests the same way."""

    def __init__(self, ctx: typer.Context, client: AsyncClient) -> None:
        self.ctx = ctx
        self.client = client
        self.cfg = client.config
        self.subjects = client.subjects

    @property
    def nc(self) -> Client:
        """The connection now: a retried submit may have opened a new one."""
        return self.client.nc

    async def call(self, noun: str, verb: str, message: Message, expect: type[M]) -> M:
        """One request to `<prefix>.api.<noun>.<verb>`; errors raise, `run_api` reports."""
        return await self.client.call(noun, verb, message, expect)

    async def pages(self, noun: str, query: Message, expect: type[M]) -> list[M]:
        """Every page of `<noun>.list` for `query` (a request with an `after` field)."""
        subject = self.subjects.api(noun, "list")

        async def page(after: str) -> bytes:
            return await self.client.ask(noun, "list", query.model_copy(update={"after": after}))

        async def flush() -> None:
            await self.nc.flush(timeout=max(1, int(self.cfg.timeout)))

        return await paging.follow(page, lambda data: read_reply(subject, data, expect), flush)


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
    except HiveError as exc:  # the client's own (a job id it refused, a paging loop)
        fail(str(exc))


async def _connected(
    ctx: typer.Context, cfg: ClientConfig, work: Callable[[Api], Awaitable[T]]
) -> T:
    debug(ctx, f"connecting to {cfg.nats.url}")
    client = AsyncClient(config=cfg, trace=lambda text: debug(ctx, text))
    api = Api(ctx, await client.connect())
    try:
        return await work(api)
    except (NatsError, NoAnswer) as exc:
        # Whatever the wait was (a reply, the next log line, a job's end), a connection
        # that broke under it is one line, the same for every command.
        if isinstance(exc, NoAnswer) and not api.nc.is_closed:
            raise
        closed = client.nc.is_closed
        raise BusError(connection_failure(cfg.nats.url, exc, closed=closed)) from None
    finally:
        with suppress(NatsError, OSError, HiveError):  # closing a broken connection is no news
            await client.nc.close()  # the work may have connected again (a retried submit)


def call(ctx: typer.Context, noun: str, verb: str, message: Message, expect: type[M]) -> M:
    """A single request/reply with the requester."""

    async def work(api: Api) -> M:
        return await api.call(noun, verb, message, expect)

    return run_api(ctx, work)
