"""The KV-backed view under the registry and the job store, against a real JetStream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.models import Resources
from requester.kvview import KvView
from requester.store import Store
from tests.support.cluster import wait_for


@pytest.fixture
async def js(nc: Client) -> Store:
    return Store(nc, timeout=2.0, deadline=4.0)


@pytest.fixture
async def view(js: Store) -> AsyncIterator[KvView[Resources]]:
    dropped: list[str] = []
    kv = KvView("test_view", Resources, noun="thing", on_drop=dropped.append)
    kv.dropped = dropped  # type: ignore[attr-defined]
    await kv.start(js)
    yield kv
    await kv.close()


async def test_own_writes_are_not_decoded_again_when_the_watch_echoes_them(
    view: KvView[Resources], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[bytes] = []
    unpack = codec.unpack_model
    monkeypatch.setattr(
        codec, "unpack_model", lambda data, model: decoded.append(data) or unpack(data, model)
    )
    assert await view.create("a", Resources(cpu=1))
    for n in range(2, 40):
        assert await view.change("a", lambda r, n=n: r.model_copy(update={"cpu": float(n)}))
    kv = await view._kv_or_fail().get("a")  # the watch has delivered up to here
    await wait_for(lambda: view._entries["a"].revision == kv.revision, what="watch caught up")
    got = view.get("a")
    assert got is not None and got.cpu == 39.0
    assert decoded == [] and view.dropped == []  # type: ignore[attr-defined]


async def test_another_writers_change_is_taken_in_and_announced(
    view: KvView[Resources], js: Store
) -> None:
    assert await view.create("a", Resources(cpu=1))
    other = await js.key_value("test_view")
    await other.put("a", codec.pack_model(Resources(cpu=7)))
    await wait_for(lambda: (got := view.get("a")) is not None and got.cpu == 7.0, what="taken in")
    assert view.dropped == ["a"]  # type: ignore[attr-defined]
    assert view.sorted_keys() == ["a"]
    await other.put("b", codec.pack_model(Resources()))
    await wait_for(lambda: view.sorted_keys() == ["a", "b"], what="new key listed")
