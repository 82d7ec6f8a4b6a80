"""`hive.Client`: the async client for plain synchronous code.

The AsyncClient runs on a private event loop in a daemon thread that the Client starts
on first use and stops on `close()`; each method hands its coroutine to that loop and
waits for the result. So the caller needs no event loop of its own (and may have one
running: a Jupyter cell, say), several threads may share one Client, and the one NATS
connection lives on one loop, as nats-py requires.

    with hive.Client() as client:
        job_id = client.submit({"engine": "process", "command": ["true"]})
        print(client.wait([job_id])[job_id].state)
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from hivectl.core.client import CONCURRENCY, AsyncClient, Spec
from hivectl.core.jobs import ExecState, Execution, Job, JobState

T = TypeVar("T")


class Client:
    """A session with a Hive cluster for synchronous code; the arguments are
    AsyncClient's. Connects on first use (or `with`), closes on `close()`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        credentials_file: str | Path | None = None,
        timeout: float | None = None,
        config_file: str | Path | None = None,
        actor: str | None = None,
    ) -> None:
        # The config loads here, in the caller's thread: a bad one raises at once.
        self._client = AsyncClient(
            url,
            credentials_file=credentials_file,
            timeout=timeout,
            config_file=config_file,
            actor=actor,
        )
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> Any:
        return self._client.config

    def connect(self) -> Client:
        self._run(self._client.connect())
        return self

    def close(self) -> None:
        """Close the connection and stop the loop's thread; the Client may be used again."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the methods, as AsyncClient's ------------------------------------------------

    def submit(self, spec: Spec, *, job_id: str | None = None) -> str:
        return self._run(self._client.submit(spec, job_id=job_id))

    def submit_many(
        self,
        specs: Iterable[Spec],
        *,
        concurrency: int = CONCURRENCY,
        job_ids: Iterable[str] | None = None,
    ) -> builtins.list[str]:
        specs = builtins.list(specs)  # read here: the iterable may belong to this thread
        return self._run(self._client.submit_many(specs, concurrency=concurrency, job_ids=job_ids))

    def get(self, job_id: str) -> Job:
        return self._run(self._client.get(job_id))

    def list(
        self, state: JobState | str | None = None, *, everyone: bool = False
    ) -> builtins.list[Job]:
        return self._run(self._client.list(state, everyone=everyone))

    def executions(
        self, job_id: str, state: ExecState | str | None = None, node: str | None = None
    ) -> Iterator[Execution]:
        return self._iterate(self._client.executions(job_id, state, node))

    def stop(self, job_id: str, reason: str = "") -> None:
        self._run(self._client.stop(job_id, reason))

    def wait(self, job_ids: str | Iterable[str], timeout: float | None = None) -> dict[str, Job]:
        ids = [job_ids] if isinstance(job_ids, str) else builtins.list(job_ids)
        return self._run(self._client.wait(ids, timeout))

    def watch(self, job_ids: str | Iterable[str]) -> Iterator[tuple[str, JobState]]:
        ids = [job_ids] if isinstance(job_ids, str) else builtins.list(job_ids)
        return self._iterate(self._client.watch(ids))

    # -- the loop -----------------------------------------------------------------------

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="hive-client", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the client's loop and wait for it; Ctrl-C cancels it there."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(self._connected(coro), self._start())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def _connected(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            await self._client.connect()
        except BaseException:
            coro.close()
            raise
        return await coro

    def _iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """`items`, one by one, each fetched on the client's loop."""

        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(items)
            except StopAsyncIteration:
                return False, None

        async def close() -> None:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            if self._loop is not None:
                self._run(close())
