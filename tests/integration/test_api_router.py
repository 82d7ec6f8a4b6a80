"""The requester's API dispatcher on a real nats-server: requests are served side by
side, so one waiting on the store holds up nobody else, and a closing requester waits
for the requests it is serving before it closes the stores they use."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.models import OkReply
from requester.routing import ApiRouter

SUBJECT = "hive.api.demo"


async def serve(nc: Client, release: asyncio.Event) -> ApiRouter:
    """A router whose `slow` verb waits for `release` (a store that is slow to answer)."""
    router = ApiRouter()
    router.noun = "demo"

    async def slow(data: bytes) -> OkReply:
        await release.wait()
        return OkReply(id="slow")

    async def fast(data: bytes) -> OkReply:
        return OkReply(id="fast")

    router.handlers.update(slow=slow, fast=fast)
    await nc.subscribe(f"{SUBJECT}.*", queue="requesters", cb=router.on_request)
    await nc.flush()
    return router


async def test_a_request_waiting_on_the_store_holds_up_no_other(nc: Client) -> None:
    release = asyncio.Event()
    router = await serve(nc, release)
    slow = [asyncio.ensure_future(nc.request(f"{SUBJECT}.slow", b"", timeout=10)) for _ in range(3)]
    # Served one after another, each of these would wait behind the three slow ones.
    fast = await asyncio.gather(*(nc.request(f"{SUBJECT}.fast", b"", timeout=5) for _ in range(5)))
    assert [codec.decode(m.data, OkReply).id for m in fast] == ["fast"] * 5
    assert not any(task.done() for task in slow)
    release.set()
    answers = await asyncio.gather(*slow)
    assert [codec.decode(m.data, OkReply).id for m in answers] == ["slow"] * 3
    assert router.served == 8 and router.errors == 0


async def test_closing_waits_for_the_requests_being_served(nc: Client) -> None:
    release = asyncio.Event()
    router = await serve(nc, release)
    pending = asyncio.ensure_future(nc.request(f"{SUBJECT}.slow", b"", timeout=10))
    await nc.request(f"{SUBJECT}.fast", b"", timeout=5)  # the slow one is being served
    assert await router.settle(0.1) == 1  # still waiting: settle says so at its deadline
    asyncio.get_running_loop().call_later(0.2, release.set)
    assert await router.settle(5) == 0
    assert codec.decode((await pending).data, OkReply).id == "slow"
