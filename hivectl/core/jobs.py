"""Jobs and executions: the spec an operator submits, the records the requester keeps,
and the messages between requester, nodes and hivectl about them.

A job is one record in the `hive_jobs` bucket (its spec and state) and one record per
execution in `hive_execs` (key `<job id>.<exec id>`), so a job's record does not grow
with its count and a change to one execution rewrites no other. In memory, and in the
rules that decide, a `Job` carries its executions; the store writes what changed.
"""

from __future__ import annotations

import itertools
import secrets
import time
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, Strict, StringConstraints

from hivectl.core.api import IdPrefix

# The spec lives in its own module; these names are part of this one's interface too.
from hivectl.core.jobspec import (
    REFUSED_FIELDS,
    Engine,
    JobSpec,
    JobType,
    ResourceRequest,
    inside_work_dir,
    parse_bytes,
    parse_cpu,
)
from hivectl.core.models import (
    ExecId,
    Message,
    Model,
    NodeId,
    NonNegFloat,
    NonNegInt,
    Reason,
    ShortText,
    register_messages,
    utcnow,
)
from hivectl.core.users import ADMIN_USER

__all__ = [
    "REFUSED_FIELDS",
    "Engine",
    "JobSpec",
    "JobType",
    "ResourceRequest",
    "inside_work_dir",
    "parse_bytes",
    "parse_cpu",
]

JOB_ID_PATTERN = r"^j-[0-9a-f]{16}$"
JobId = Annotated[str, StringConstraints(strict=True, pattern=JOB_ID_PATTERN)]


def new_job_id() -> str:
    return f"j-{secrets.token_hex(8)}"


_exec_seq = itertools.count(secrets.randbelow(1 << 20))


def new_exec_id() -> str:
    """`e-` and 16 hex digits that sort by creation: milliseconds since the epoch (11
    digits, good until the year 2527), then a counter from a random start (5 digits),
    so a job's executions list in the order they were made without reading them."""
    millis = time.time_ns() // 1_000_000
    return f"e-{millis & 0xFFFFFFFFFFF:011x}{next(_exec_seq) & 0xFFFFF:05x}"


class JobState(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"


class ExecState(StrEnum):
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"
    REJECTED = "REJECTED"


JOB_TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.STOPPED})
EXEC_TERMINAL = frozenset(
    {ExecState.COMPLETED, ExecState.FAILED, ExecState.CANCELLED, ExecState.LOST, ExecState.REJECTED}
)


class Measured(Model):
    """What a node measured of one execution; None where its executor cannot tell."""

    cpu_seconds: NonNegFloat | None = None  # user + system time of the job's processes
    peak_memory: NonNegInt | None = None  # bytes: the largest resident set seen


class Execution(Model):
    exec_id: ExecId
    job_id: JobId
    node_id: NodeId
    attempt: NonNegInt = 0
    state: ExecState = ExecState.OFFERED
    exit_code: int | None = None
    error: Reason = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    notice: Reason = ""  # what a node's limit cut (its log, its outputs)
    epoch: NonNegInt = 0  # as Job.epoch, for this execution's own record
    measured: Measured | None = None  # what its node measured of it, once it ended


class Job(Model):
    job_id: JobId
    spec: JobSpec
    state: JobState = JobState.PENDING
    reason: Reason = ""
    executions: list[Execution] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # The user who submitted it (set by the requester from the verified request, never
    # by the client); jobs stored before users existed belong to the built-in admin.
    owner: ShortText = ADMIN_USER
    # When it last began to wait for a node, if later than its creation and its last
    # execution's end: its owner's quota held it until then (the queue timeout counts
    # only time spent waiting for a node).
    waiting_from: datetime | None = None
    # The epoch of the leading requester that last decided for this job: an older
    # leader (paused, cut off) may not write it again.
    epoch: NonNegInt = 0
    # The requester that took the job to place it itself (a follower, when nothing was
    # waiting: see requester/jobs/assist.py); empty: the leader places it.
    placer: ShortText = ""
    # Executions by state, over all of them: set in replies whose `executions` is cut
    # short (`job list` sends none, a big job's `get` the first few); never stored.
    counts: dict[ExecState, NonNegInt] = Field(default_factory=dict)
    # The nodes its executions ran on (not refused), in replies that carry no executions
    # (`job list`); never stored.
    nodes: Annotated[list[NodeId], Field(max_length=1024)] = Field(default_factory=list)
    # Its place in the queue of waiting work (1: placed next), in `job list --queued`
    # replies; 0 elsewhere, never stored.
    position: NonNegInt = 0

    def tally(self) -> dict[ExecState, int]:
        """Executions by state: `counts` when the reply carried it, else counted here."""
        if self.counts:
            return dict(self.counts)
        tally: dict[ExecState, int] = {}
        for execution in self.executions:
            tally[execution.state] = tally.get(execution.state, 0) + 1
        return tally


# -- requester <-> node ------------------------------------------------------------------


class Offer(Message):
    """`hive.compute.<node>.offer`, sealed with the node's key; answered by OfferReply."""

    kind: ClassVar[str] = "offer"
    node_id: NodeId
    exec_id: ExecId
    job_id: JobId
    attempt: NonNegInt = 0
    spec: JobSpec
    epoch: NonNegInt = 0  # the offering leader's: a node refuses one older than it has seen


class OfferReply(Message):
    """A node's answer to an offer. A refusal is transient unless `permanent`: no room
    now, an engine this node lacks, a setting of this node, a shutdown; the requester
    then tries other nodes and, later, this one again. `permanent` says that no node
    will ever run the spec (it breaks a rule every node applies): the requester fails
    the job with the node's reason instead of offering it on. Agents from before the
    field answer without it, and their refusals count as transient. `full` says the
    refusal was for want of room (its `max_executions`, or resources): the node takes
    work again once an execution there ends."""

    kind: ClassVar[str] = "offer_reply"
    exec_id: ExecId
    accepted: Annotated[bool, Strict()]
    reason: Reason = ""
    permanent: Annotated[bool, Strict()] = False
    full: Annotated[bool, Strict()] = False


class Cancel(Message):
    """`hive.compute.<node>.cancel`, sealed; answered by OkReply (also for unknown ids)."""

    kind: ClassVar[str] = "cancel"
    node_id: NodeId
    exec_id: ExecId
    reason: Reason = ""
    epoch: NonNegInt = 0  # as in Offer


class Withdraw(Message):
    """`hive.compute.<node>.withdraw`, sealed: the requester takes back an offer whose
    answer it never got. Answered by OfferReply: `accepted` when the node has taken the
    execution (running, or ended); otherwise the node will never take it, so the work
    may go elsewhere without running twice."""

    kind: ClassVar[str] = "withdraw"
    node_id: NodeId
    exec_id: ExecId
    epoch: NonNegInt = 0  # as in Offer


class ExecUpdate(Message):
    """`hive.node.<id>.exec` into the HIVE_EXEC stream, sealed with the node's key."""

    kind: ClassVar[str] = "exec_update"
    node_id: NodeId
    seq: NonNegInt
    exec_id: ExecId
    job_id: JobId
    state: ExecState
    exit_code: int | None = None
    error: Reason = ""
    notice: Reason = ""  # what a node's limit cut (its log, its outputs)
    # On the final update: what the node measured of the execution (older nodes: none).
    measured: Measured | None = None


# -- hivectl <-> requester ---------------------------------------------------------------


class JobSubmitRequest(Message):
    """A job to create. The client picks `job_id` before sending, so a submit retried
    after a lost reply names the same job: the requester answers a repeat (same id,
    same spec) with the job it already has, and refuses the same id with another spec.
    Without an id (older clients) the requester picks one, and a retry is a new job."""

    kind: ClassVar[str] = "job_submit"
    spec: JobSpec
    job_id: JobId | None = None


class JobSubmitReply(Message):
    kind: ClassVar[str] = "job_submit_reply"
    job_id: JobId


class JobListRequest(Message):
    """A page of the caller's own jobs (with `everyone`, every user's; not for a
    submitter), newest first; with `queued`, the jobs waiting to be placed, in the order
    the leader's scheduler places them (each with its `position`)."""

    kind: ClassVar[str] = "job_list"
    state: JobState | None = None
    everyone: Annotated[bool, Strict()] = False
    queued: Annotated[bool, Strict()] = False
    after: ShortText = ""
    limit: Annotated[int, Strict(), Field(ge=1, le=1000)] = 1000


class JobListReply(Message):
    kind: ClassVar[str] = "job_list_reply"
    jobs: list[Job]
    next: ShortText = ""


class JobGetRequest(Message):
    kind: ClassVar[str] = "job_get"
    id: IdPrefix


class JobGetReply(Message):
    kind: ClassVar[str] = "job_get_reply"
    job: Job


class JobExecutionsRequest(Message):
    """One page of a job's executions, oldest first, optionally of one state or node."""

    kind: ClassVar[str] = "job_executions"
    id: IdPrefix
    state: ExecState | None = None
    node: ShortText = ""  # a node id, or a unique prefix of one
    after: ShortText = ""  # the last exec id of the previous page
    limit: Annotated[int, Strict(), Field(ge=1, le=1000)] = 1000


class JobExecutionsReply(Message):
    kind: ClassVar[str] = "job_executions_reply"
    job_id: JobId
    executions: list[Execution]
    next: ShortText = ""  # pass as `after` for the next page; empty on the last
    total: NonNegInt = 0  # executions that match the filters, on every page


class JobStopRequest(Message):
    kind: ClassVar[str] = "job_stop"
    id: IdPrefix
    reason: Reason = ""


class JobEvent(Message):
    """Published on `hive.events.job.<id>` (and kept in HIVE_EVENTS) when a job's state changes."""

    kind: ClassVar[str] = "job_event"
    job_id: JobId
    old: ShortText = ""
    new: ShortText = ""
    reason: Reason = ""
    at: datetime = Field(default_factory=utcnow)
    actor: ShortText = ""  # as NodeEvent.actor


register_messages(
    Offer,
    OfferReply,
    Cancel,
    Withdraw,
    ExecUpdate,
    JobSubmitRequest,
    JobSubmitReply,
    JobListRequest,
    JobListReply,
    JobGetRequest,
    JobGetReply,
    JobExecutionsRequest,
    JobExecutionsReply,
    JobStopRequest,
    JobEvent,
)

# Logs: each chunk of output is one message on `hive.logs.<job>.<exec>` (stream
# HIVE_LOGS) whose data is the raw bytes and whose headers say which stream it came
# from; the last message of an execution carries LOG_EOF_HEADER with the exit code.
LOG_STREAM_HEADER = "Hive-Stream"  # "stdout" | "stderr"
LOG_EOF_HEADER = "Hive-Eof"  # exit code as text; no data
LOG_DROPPED_HEADER = "Hive-Dropped"  # on the EOF message: bytes the node's log cap left out
