"""An in-process requester on the test's real nats-server, plus helpers to poll it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from hivectl.core.config import EmbeddedNatsSettings, NatsSettings, RequesterConfig
from requester.service import Requester

T = TypeVar("T")


def requester_config(nats_url: str, data_dir: Path, **overrides: object) -> RequesterConfig:
    """Fast health thresholds so state changes show within a second."""
    values: dict[str, object] = {
        "nats": NatsSettings(url=nats_url),
        "embedded": EmbeddedNatsSettings(enabled=False),
        "data_dir": data_dir,
        "unhealthy_after": 0.6,
        "disconnected_after": 1.2,
        "health_check_interval": 0.05,
    }
    values.update(overrides)
    return RequesterConfig(**values)  # type: ignore[arg-type]


class RunningRequester:
    """A Requester serving in a background task of the test's event loop."""

    def __init__(self, config: RequesterConfig) -> None:
        self.requester = Requester(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Requester:
        self._task = asyncio.create_task(self.requester.serve())
        await wait_for(lambda: self.requester.status == "running", what="requester running")
        return self.requester

    async def __aexit__(self, *exc: object) -> None:
        self.requester.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)


async def wait_for(
    check: Callable[[], T | Awaitable[T]], *, timeout: float = 5.0, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
