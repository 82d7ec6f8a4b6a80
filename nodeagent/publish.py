"""Getting an execution's updates, logs and results into JetStream, come what may.

An update must not be lost: the requester learns how a job ended only from HIVE_EXEC.
So every publish is retried with capped backoff while NATS is down, the stream does
not exist yet, or the node has no message key (re-registering); it stops only when the
agent gives up on shutdown. The `Nats-Msg-Id` header (`<exec>-<state>`) lets JetStream
drop the duplicate a retry after a lost acknowledgement would make.

Logs are batched: chunks are merged per stream and flushed every 100 ms or at 64 KiB,
so a chatty job sends a message per batch, not per line; a writer that outruns the
publishing waits (back-pressure reaches the job's pipe) instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from hivectl.core import auth, codec
from hivectl.core.daemon import wait_event
from hivectl.core.jobs import (
    LOG_DROPPED_HEADER,
    LOG_EOF_HEADER,
    LOG_STREAM_HEADER,
    ExecState,
    ExecUpdate,
    Measured,
)
from hivectl.core.subjects import Subjects

log = logging.getLogger("hive.nodeagent")

PUBLISH_TIMEOUT = 2.0
RETRY_FIRST, RETRY_CAP = 0.1, 5.0
FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 64 * 1024
MAX_BUFFERED = 1024 * 1024


class NotJoined(RuntimeError):
    """No message key yet: the node has not (re-)joined the cluster."""


class Publisher:
    """Sealed updates, logs and results of this node's executions; retried until they land."""

    def __init__(
        self,
        subjects: Subjects,
        node_id: str,
        key: Callable[[], bytes | None],
        next_seq: Callable[[], int],
    ) -> None:
        self.subjects = subjects
        self.node_id = node_id
        self.key = key
        self.next_seq = next_seq
        self.nc: Client | None = None
        self.gave_up = asyncio.Event()
        self.lost = 0  # publishes abandoned on shutdown

    async def update(
        self,
        exec_id: str,
        job_id: str,
        state: ExecState,
        exit_code: int | None,
        error: str,
        notice: str = "",
        *,
        measured: Measured | None = None,
    ) -> bool:
        message = ExecUpdate(
            node_id=self.node_id,
            seq=self.next_seq(),
            exec_id=exec_id,
            job_id=job_id,
            state=state,
            exit_code=exit_code,
            error=error[:1024],
            notice=notice[:1024],
            measured=measured,
        )
        subject = self.subjects.node_exec(self.node_id)
        headers = {"Nats-Msg-Id": f"{exec_id}-{state}"}

        async def attempt() -> None:
            key = self.key()
            if key is None:
                raise NotJoined("the node has no message key yet")
            data = auth.seal(codec.encode(message), key)
            await self._js().publish(subject, data, timeout=PUBLISH_TIMEOUT, headers=headers)

        return await self._retry(f"{state} update of {exec_id}", attempt)

    async def log(self, job_id: str, exec_id: str, stream: str, data: bytes, chunk_id: str) -> bool:
        """One chunk of output. `chunk_id`, unique to the chunk, makes a resend (the
        server stored it, its ack was lost to a reconnect) stored once."""
        headers = {LOG_STREAM_HEADER: stream, "Nats-Msg-Id": chunk_id}
        return await self._log(job_id, exec_id, data, headers)

    async def eof(self, job_id: str, exec_id: str, exit_code: int, dropped: int = 0) -> bool:
        """The end of an execution's log; `dropped`: bytes the log cap left out."""
        headers = {LOG_EOF_HEADER: str(exit_code), "Nats-Msg-Id": f"{exec_id}-eof"}
        if dropped:
            headers[LOG_DROPPED_HEADER] = str(dropped)
        return await self._log(job_id, exec_id, b"", headers)

    async def _log(self, job_id: str, exec_id: str, data: bytes, headers: dict[str, str]) -> bool:
        subject = self.subjects.logs(job_id, exec_id)

        async def attempt() -> None:
            await self._js().publish(subject, data, timeout=PUBLISH_TIMEOUT, headers=headers)

        return await self._retry(f"logs of {exec_id}", attempt)

    async def results(self, exec_id: str, archive: Path) -> bool:
        """Upload the archive file (streamed from disk, a chunk at a time)."""

        async def attempt() -> None:
            store = await self._js().object_store(self.subjects.results_store)
            with archive.open("rb") as data:
                await store.put(exec_id, data)

        return await self._retry(f"results of {exec_id}", attempt)

    def _js(self) -> Any:
        if self.nc is None:
            raise NotJoined("not connected")
        return self.nc.jetstream()

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[None]]) -> bool:
        """Run `attempt` until it succeeds (True) or the agent gives up (False)."""
        delay, failures = RETRY_FIRST, 0
        while True:
            try:
                await attempt()
                if failures:
                    log.info("%s published after %d retries", what, failures)
                return True
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("publishing %s failed (%s); retrying", what, _text(exc))
            if self.gave_up.is_set() or await wait_event(self.gave_up, delay):
                log.error("gave up publishing %s on shutdown", what)
                self.lost += 1
                return False
            delay = min(delay * 2, RETRY_CAP)


class LogBatcher:
    """Merges an execution's output into batches and publishes them in order.

    At most `limit` bytes (0: no limit) are kept; the rest is read and counted in
    `dropped`, so the job never blocks on a full pipe and the user is told what went.
    """

    def __init__(self, publish: Callable[[str, bytes], Awaitable[object]], limit: int = 0) -> None:
        self._publish = publish
        self.limit = limit
        self.kept = 0
        self.dropped = 0
        self._chunks: list[tuple[str, bytearray]] = []
        self._size = 0
        self._pending = asyncio.Event()  # something to send (or closing)
        self._wake = asyncio.Event()  # send now: a full batch (or closing)
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        self._task = asyncio.create_task(self._loop())

    async def write(self, stream: str, data: bytes) -> None:
        if self.limit:
            room = max(0, self.limit - self.kept)
            if len(data) > room:
                self.dropped += len(data) - room
                data = data[:room]
            self.kept += len(data)
            if not data:
                return
        if self._chunks and self._chunks[-1][0] == stream:
            self._chunks[-1][1].extend(data)
        else:
            self._chunks.append((stream, bytearray(data)))
        self._size += len(data)
        self._pending.set()
        if self._size >= FLUSH_BYTES:
            self._wake.set()
        while self._size >= MAX_BUFFERED and not self._task.done():
            self._room.clear()
            await self._room.wait()

    async def close(self) -> None:
        """Flush what is left and stop."""
        self._closed = True
        self._pending.set()
        self._wake.set()
        with contextlib.suppress(Exception):
            await self._task

    async def _loop(self) -> None:
        while True:
            # Idle, no timer: an execution that writes nothing (a sleep, a quiet job)
            # costs the event loop nothing, however many run at once.
            await self._pending.wait()
            await wait_event(self._wake, FLUSH_INTERVAL)  # a batch: the interval or full
            self._pending.clear()
            self._wake.clear()
            closed = self._closed
            await self._flush()
            if closed:
                return

    async def _flush(self) -> None:
        chunks, self._chunks, self._size = self._chunks, [], 0
        self._room.set()
        for stream, data in chunks:
            for start in range(0, len(data), FLUSH_BYTES):
                await self._publish(stream, bytes(data[start : start + FLUSH_BYTES]))


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
