"""Following a paged list (`node list`, `job list`) to its last page.

Each page names the id to ask after for the next one. hivectl asks for page n+1 as
soon as page n arrives, reading only its `next` field, so the requester builds the
next page while hivectl validates this one: the two overlap instead of taking turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from typing import TypeVar

from hivectl.cli.api import Api, CliError
from hivectl.core import codec
from hivectl.core.models import Message

R = TypeVar("R", bound=Message)


async def follow(
    api: Api, noun: str, query: Message, expect: type[R], verb: str = "list"
) -> list[R]:
    """Every page of `<noun>.<verb>` for `query` (a request with an `after` field).

    Cyclic garbage collection is paused meanwhile: ten thousand nodes are hundreds of
    thousands of new objects and none of them is garbage yet, so every collection the
    allocations trigger is wasted work (it doubled the time to decode them). After, the
    pages are frozen: they live until the command ends, and scanning them again in the
    next full collection would cost another 50 ms.
    """
    pages: list[R] = []
    after = ""
    pending = await _ask(api, noun, verb, query, after)
    with _gc_paused():
        try:
            while True:
                data = await pending
                ahead = codec.peek(data, "next")
                if isinstance(ahead, str) and ahead not in ("", after):
                    pending = await _ask(api, noun, verb, query, ahead)
                page = api.read(noun, verb, data, expect)
                pages.append(page)
                following = getattr(page, "next", "")
                if not following:
                    return pages
                if following == after:
                    raise CliError(f"the requester sent the page after {after!r} twice; giving up")
                if following != ahead:  # a map with `next` twice: trust the decoded one
                    pending.cancel()
                    pending = await _ask(api, noun, verb, query, following)
                after = following
        finally:
            await _drop(pending)


async def _ask(api: Api, noun: str, verb: str, query: Message, after: str) -> asyncio.Future[bytes]:
    """Ask for the page after `after`; return once the request is on the wire.

    Decoding a page never yields to the event loop, so a request merely scheduled
    would wait for it. A flush (PING/PONG, well under a millisecond) after the task
    has published proves the server has the request before decoding starts.
    """
    page = query.model_copy(update={"after": after})
    pending = asyncio.ensure_future(api.ask(noun, verb, page))
    await asyncio.sleep(0)  # the task publishes the request
    with contextlib.suppress(Exception):  # a broken connection: the ask says so
        await api.nc.flush(timeout=max(1, int(api.cfg.timeout)))
    return pending


async def _drop(pending: asyncio.Future[bytes]) -> None:
    """Cancel a page asked for but no longer wanted (the listing failed)."""
    if not pending.done():
        pending.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await pending


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
