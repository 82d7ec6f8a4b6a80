"""Following a paged list (`node list`, `job list`, a job's executions) to its last page.

Each page names the id to ask after for the next one. The next page is asked for as
soon as a page arrives, reading only its `next` field, so the requester builds page
n+1 while this side validates page n: the two overlap instead of taking turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from hivectl.core import codec
from hivectl.core.errors import HiveError
from hivectl.core.models import Message

R = TypeVar("R", bound=Message)
Ask = Callable[[str], Awaitable[bytes]]  # the page after this id, undecoded
Read = Callable[[bytes], R]  # a page's bytes, decoded and checked
Flush = Callable[[], Awaitable[None]]  # returns once what was published reached NATS


async def follow(ask: Ask, read: Read[R], flush: Flush) -> list[R]:
    """Every page, from the first (`ask("")`) to the one whose `next` is empty.

    Cyclic garbage collection is paused meanwhile: ten thousand nodes are hundreds of
    thousands of new objects and none of them is garbage yet, so every collection the
    allocations trigger is wasted work (it doubled the time to decode them). After, the
    pages are frozen: they live as long as the caller keeps them, and scanning them
    again in the next full collection would cost another 50 ms.
    """
    pages: list[R] = []
    after = ""
    pending = await _ask(ask, flush, after)
    with _gc_paused():
        try:
            while True:
                data = await pending
                ahead = codec.peek(data, "next")
                if isinstance(ahead, str) and ahead not in ("", after):
                    pending = await _ask(ask, flush, ahead)
                page = read(data)
                pages.append(page)
                following = getattr(page, "next", "")
                if not following:
                    return pages
                if following == after:
                    raise HiveError(f"the requester sent the page after {after!r} twice; giving up")
                if following != ahead:  # a map with `next` twice: trust the decoded one
                    pending.cancel()
                    pending = await _ask(ask, flush, following)
                after = following
        finally:
            await _drop(pending)


async def _ask(ask: Ask, flush: Flush, after: str) -> asyncio.Future[bytes]:
    """Ask for the page after `after`; return once the request is on the wire.

    Decoding a page never yields to the event loop, so a request merely scheduled
    would wait for it. A flush (PING/PONG, well under a millisecond) after the task
    has published proves the server has the request before decoding starts.
    """
    pending = asyncio.ensure_future(ask(after))
    await asyncio.sleep(0)  # the task publishes the request
    with contextlib.suppress(Exception):  # a broken connection: the ask says so
        await flush()
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
