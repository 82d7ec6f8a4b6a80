"""Logs, results and events through the requester (`job.logs`, `job.result`,
`event.list`), for hivectl run with a user's credential, which has no JetStream
access: the requester reads the streams and the object store for it, a page at a time,
and checks the job is the user's. hivectl with the operator credential reads them
itself (hivectl.cli.jobdata, hivectl.cli.events).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from io import BufferedRandom
from typing import IO

from hivectl.cli.api import Api, CliError
from hivectl.core.errors import NotFound
from hivectl.core.joboutput import (
    EventListReply,
    EventListRequest,
    JobLogsReply,
    JobLogsRequest,
    JobResultReply,
    JobResultRequest,
    decode_data,
)
from hivectl.core.jobs import Execution

POLL_INTERVAL = 0.2  # how often a following hivectl asks for more output, in seconds
Live = Callable[[], Awaitable[bool]]


async def copy_logs_api(
    api: Api, execution: Execution, live: Live | None, on_eof: Callable[[int], None]
) -> bool:
    """Copy one execution's output, as `jobdata.copy_logs` does: True once its end
    (EOF) came; False when there is no more now and (without `live`, or once `live()`
    says it is over) none will come. `on_eof` hears the bytes its node's cap cut."""
    request = JobLogsRequest(id=execution.job_id, exec_id=execution.exec_id)
    ended = False
    while True:
        reply = await api.call("job", "logs", request, JobLogsReply)
        for chunk in reply.chunks:
            write(sys.stderr if chunk.stream == "stderr" else sys.stdout, chunk.raw())
        if reply.eof:
            on_eof(reply.dropped)
            return True
        request = request.model_copy(update={"seq": reply.seq, "offset": reply.offset})
        if reply.chunks:
            continue
        if ended:
            return False
        if live is None or not await live():
            ended = True  # one more look: what was written just before it ended
            continue
        await asyncio.sleep(POLL_INTERVAL)


def write(out: IO[str], data: bytes) -> None:
    out.flush()
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(data.decode(errors="replace"))
    else:
        buffer.write(data)
        buffer.flush()


async def fetch_result_api(api: Api, execution: Execution, into: BufferedRandom) -> bool:
    """`fetch_result`, False when the execution stored no archive."""
    try:
        await fetch_result(api, execution, into)
    except NotFound:
        return False
    return True


async def fetch_result(api: Api, execution: Execution, into: IO[bytes]) -> None:
    """Write one execution's archive into `into`; CliError when what came is not what
    the object store holds (its size and SHA-256)."""
    request = JobResultRequest(id=execution.job_id, exec_id=execution.exec_id)
    digest = hashlib.sha256()
    size = 0
    while True:
        reply = await api.call("job", "result", request, JobResultReply)
        data = decode_data(reply.data)
        into.write(data)
        digest.update(data)
        size += len(data)
        if reply.done:
            break
        request = request.model_copy(update={"seq": reply.seq, "offset": reply.offset})
    expected = "SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode()
    if size != reply.size or (reply.digest and reply.digest != expected):
        raise CliError(
            f"the result archive of {execution.exec_id} came damaged: {size} of "
            f"{reply.size} bytes, digest {expected}, stored {reply.digest}"
        )


async def read_events_api(
    api: Api,
    target: tuple[str | None, str | None],
    since: datetime | None,
    follow: bool,
    poll: float,
) -> AsyncIterator[list[bytes]]:
    """Pages of events (each as the stream holds it) of a node, a job or all, from
    `since`: every page there is, then, with `follow`, each new one (an empty page when
    it has caught up, then waiting `poll` seconds between looks)."""
    node, job = target
    request = EventListRequest(node=node, job=job, since=since)
    while True:
        reply = await api.call("event", "list", request, EventListReply)
        yield [decode_data(event) for event in reply.events]
        request = request.model_copy(update={"after": reply.after})
        if reply.more:
            continue
        if not follow:
            return
        if reply.events:
            yield []  # caught up
        await asyncio.sleep(poll)
