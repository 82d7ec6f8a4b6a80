"""Logs, result archives and events through the requester's API (`job.logs`,
`job.result`, `event.list`).

hivectl with an operator credential reads the HIVE_LOGS and HIVE_EVENTS streams and the
results object store itself; a user's NATS credential has no JetStream access, so the
requester reads them for it, checking the job is the user's (or that its role reads everyone's), a
page at a time so that no reply exceeds max_payload. A cursor (`seq`, `offset`) says
where the next page starts: the stream sequence of a message, and how many bytes of it
were sent already (a page may end inside one message). The bytes travel as base64.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field, Strict, StringConstraints

from hivectl.core.api import IdPrefix
from hivectl.core.models import (
    ExecId,
    Message,
    Model,
    NodeId,
    NonNegInt,
    ShortText,
    register_messages,
)

MAX_DATA = 64 * 1024 * 1024  # base64 characters in one reply, far above any max_payload
Data = Annotated[str, StringConstraints(strict=True, max_length=MAX_DATA)]
Cursor = Annotated[int, Strict(), Field(ge=1, le=2**62)]


def encode_data(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def decode_data(text: str) -> bytes:
    return base64.b64decode(text)


class JobLogsRequest(Message):
    """A page of one execution's output, from the cursor on."""

    kind: ClassVar[str] = "job_logs"
    id: IdPrefix  # the job
    exec_id: ExecId
    seq: Cursor = 1
    offset: NonNegInt = 0


class LogChunk(Model):
    stream: Literal["stdout", "stderr"] = "stdout"
    data: Data = ""

    def raw(self) -> bytes:
        return decode_data(self.data)


class JobLogsReply(Message):
    """`eof`: the execution's output ended (`dropped`: bytes its node's cap cut);
    otherwise ask again from `seq`/`offset` (nothing more yet when `chunks` is empty)."""

    kind: ClassVar[str] = "job_logs_reply"
    exec_id: ExecId
    chunks: Annotated[list[LogChunk], Field(max_length=100_000)] = Field(default_factory=list)
    seq: Cursor = 1
    offset: NonNegInt = 0
    eof: Annotated[bool, Strict()] = False
    dropped: NonNegInt = 0


class JobResultRequest(Message):
    """A piece of one execution's result archive, from the cursor on."""

    kind: ClassVar[str] = "job_result"
    id: IdPrefix
    exec_id: ExecId
    seq: Cursor = 1
    offset: NonNegInt = 0


class JobResultReply(Message):
    """`size` and `digest` (`SHA-256=<base64url>`, as the object store keeps it) are
    the whole archive's, to check once every piece has come; `done` on the last."""

    kind: ClassVar[str] = "job_result_reply"
    exec_id: ExecId
    size: NonNegInt
    digest: ShortText = ""
    data: Data = ""
    seq: Cursor = 1
    offset: NonNegInt = 0
    done: Annotated[bool, Strict()] = False


EVENTS_PAGE = 1000


class EventListRequest(Message):
    """Events in stream order from `after` (a stream sequence) on, or from `since`:
    every one, or one node's or one job's (ids in full). A submitter may ask only for
    the events of one of its own jobs."""

    kind: ClassVar[str] = "event_list"
    node: NodeId | None = None
    job: NodeId | None = None
    since: datetime | None = None
    after: NonNegInt = 0
    limit: Annotated[int, Strict(), Field(ge=1, le=EVENTS_PAGE)] = EVENTS_PAGE


class EventListReply(Message):
    """Each event as the stream holds it (an encoded NodeEvent, JobEvent or TokenEvent,
    in base64); `after` is where the next page starts, `more` whether one may be ready."""

    kind: ClassVar[str] = "event_list_reply"
    events: Annotated[list[Data], Field(max_length=EVENTS_PAGE)] = Field(default_factory=list)
    after: NonNegInt = 0
    more: Annotated[bool, Strict()] = False


register_messages(
    JobLogsRequest,
    JobLogsReply,
    JobResultRequest,
    JobResultReply,
    EventListRequest,
    EventListReply,
)
