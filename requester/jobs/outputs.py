"""`hive.api.job.{logs,result}`: an execution's output and result archive, read by the
requester for callers with no JetStream access of their own (users), a page at a time.

Each page is read with "next message on this subject from sequence N" gets
(STREAM.MSG.GET with next_by_subj), so a page costs a request per stream message it
carries and nothing more as the stream grows; a page stays under max_payload (the
bytes go as base64) and ends inside a message when one does not fit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from hivectl.core import codec
from hivectl.core.joboutput import (
    JobLogsReply,
    JobLogsRequest,
    JobResultReply,
    JobResultRequest,
    LogChunk,
    encode_data,
)
from hivectl.core.jobs import LOG_DROPPED_HEADER, LOG_EOF_HEADER, LOG_STREAM_HEADER, Job
from hivectl.core.models import Message
from hivectl.core.subjects import Subjects
from hivectl.core.users import Role
from requester.jobs.api import check_owner, resolve_for_caller
from requester.jobs.fenced import JobError
from requester.jobs.records import JobStore
from requester.routing import REPLY_HEADROOM, Handler
from requester.store import Store

MAX_MESSAGES = 512  # stream messages one page reads at most (many tiny log chunks)
CHUNK_OVERHEAD = 32  # bytes a log chunk's own fields take in a reply


@dataclass
class Cursor:
    seq: int
    offset: int


class JobOutputs:
    def __init__(
        self, store: JobStore, js: Store, subjects: Subjects, *, max_payload: int,
        limits: codec.Limits,
    ) -> None:  # fmt: skip
        self._store = store
        self._js = js
        self._subjects = subjects
        # Raw bytes per page: base64 makes 4 characters of every 3 bytes.
        self._budget = max(1, (max_payload - REPLY_HEADROOM) * 3 // 4 - 1024)
        self._limits = limits
        self._results: ObjectStore | None = None

    def handlers(self) -> dict[str, Handler]:
        return {"logs": self.logs, "result": self.result}

    @staticmethod
    def roles() -> dict[str, Role]:
        return {"logs": Role.VIEWER, "result": Role.VIEWER}  # and check_owner

    def _job(self, prefix: str, exec_id: str) -> Job:
        job = resolve_for_caller(self._store, prefix)
        check_owner(job)
        if not any(e.exec_id == exec_id for e in job.executions):
            raise JobError("not_found", f"execution {exec_id} of {job.job_id} not found")
        return job

    async def logs(self, data: bytes) -> Message:
        request = codec.decode(data, JobLogsRequest, self._limits)
        job = self._job(request.id, request.exec_id)
        stream = self._subjects.logs_stream
        subject = self._subjects.logs(job.job_id, request.exec_id)
        reply = JobLogsReply(exec_id=request.exec_id)
        at = Cursor(request.seq, request.offset)
        left = self._budget
        for _ in range(MAX_MESSAGES):
            msg = await self._next(stream, subject, at.seq)
            if msg is None:
                break
            headers = msg.headers or {}
            if LOG_EOF_HEADER in headers:
                reply.eof = True
                reply.dropped = _int(headers.get(LOG_DROPPED_HEADER, "0"))
                at = Cursor((msg.seq or at.seq) + 1, 0)
                break
            piece, at = _take(msg, at, left)
            left -= len(piece) + CHUNK_OVERHEAD
            kind = "stderr" if headers.get(LOG_STREAM_HEADER) == "stderr" else "stdout"
            reply.chunks.append(LogChunk(stream=kind, data=encode_data(piece)))
            if left <= 0 or at.offset:
                break
        reply.seq, reply.offset = at.seq, at.offset
        return reply

    async def result(self, data: bytes) -> Message:
        request = codec.decode(data, JobResultRequest, self._limits)
        self._job(request.id, request.exec_id)
        objects = await self._objects()
        try:
            info = await self._js.retried(
                self._subjects.results_store, lambda: objects.get_info(request.exec_id)
            )
        except (ObjectNotFoundError, NotFoundError):
            raise JobError("not_found", f"no result archive for {request.exec_id}") from None
        stream = self._subjects.object_stream(self._subjects.results_store)
        subject = f"$O.{self._subjects.results_store}.C.{info.nuid}"
        at = Cursor(request.seq, request.offset)
        pieces: list[bytes] = []
        left = self._budget
        done = False
        for _ in range(MAX_MESSAGES):
            msg = await self._next(stream, subject, at.seq)
            if msg is None:
                done = True
                break
            piece, at = _take(msg, at, left)
            pieces.append(piece)
            left -= len(piece)
            if left <= 0 or at.offset:
                break
        return JobResultReply(
            exec_id=request.exec_id, size=info.size or 0, digest=info.digest or "",
            data=encode_data(b"".join(pieces)), seq=at.seq, offset=at.offset, done=done,
        )  # fmt: skip

    async def _objects(self) -> ObjectStore:
        if self._results is None:
            bucket = self._subjects.results_store
            js = self._js
            try:
                self._results = await js.retried(bucket, lambda: js.object_store(bucket))
            except NotFoundError:
                raise JobError("not_found", "no result archives are stored yet") from None
        return self._results

    async def _next(self, stream: str, subject: str, seq: int) -> RawStreamMsg | None:
        """The first message on `subject` at or after `seq`; None when there is none."""
        get = functools.partial(self._js.get_msg, stream, seq=seq, subject=subject, next=True)
        try:
            return await self._js.retried(stream, get)
        except NotFoundError:
            return None


def _take(msg: RawStreamMsg, at: Cursor, budget: int) -> tuple[bytes, Cursor]:
    """What of `msg` fits in `budget` from the cursor on, and the cursor after it."""
    data = msg.data or b""
    start = at.offset if msg.seq == at.seq else 0
    piece = data[start : start + max(budget, 0)]
    end = start + len(piece)
    if end < len(data):
        return piece, Cursor(msg.seq or at.seq, end)
    return piece, Cursor((msg.seq or at.seq) + 1, 0)


def _int(text: str) -> int:
    try:
        return max(0, int(text))
    except ValueError:
        return 0
