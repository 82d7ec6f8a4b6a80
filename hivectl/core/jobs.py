"""Jobs and executions: the spec an operator submits, the records the requester keeps,
and the messages between requester, nodes and hivectl about them.

A job is one record in the `hive_jobs` bucket holding its spec, its state and all its
executions, so one compare-and-set covers a whole scheduling decision.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, Strict, StringConstraints, model_validator

from hivectl.core.api import IdPrefix
from hivectl.core.models import (
    Message,
    Model,
    NodeId,
    NonNegInt,
    Reason,
    Resources,
    ShortText,
    register_messages,
    utcnow,
)
from hivectl.core.selectors import SelectorError, parse_selector

JobId = Annotated[str, StringConstraints(strict=True, pattern=r"^j-[0-9a-f]{16}$")]
ExecId = Annotated[str, StringConstraints(strict=True, pattern=r"^e-[0-9a-f]{16}$")]


def new_job_id() -> str:
    return f"j-{secrets.token_hex(8)}"


def new_exec_id() -> str:
    return f"e-{secrets.token_hex(8)}"


class JobType(StrEnum):
    BATCH = "batch"  # `count` executions
    OPS = "ops"  # one execution on every matching node


class Engine(StrEnum):
    DOCKER = "docker"
    PROCESS = "process"


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

# -- quantities ------------------------------------------------------------------------
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def parse_bytes(value: Any) -> Any:
    """'512MiB', '2GB', '1Gi', '100M' or a number of bytes, as bytes (IEC when 'i')."""
    if not isinstance(value, str):
        return value
    match = _BYTES.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size (like 512MiB, 2GB, 1Gi)")
    number, unit = float(match[1]), (match[2] or "B").upper()
    if unit == "B":
        return int(number)
    base = 1024 if "I" in unit else 1000
    return int(number * base ** _POWERS[unit[0]])


def parse_cpu(value: Any) -> Any:
    """'500m', '0.5' or a number of cores, as cores."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a CPU amount (like 0.5 or 500m)") from None
    return value


def parse_seconds(value: Any) -> Any:
    from hivectl.core.config import parse_duration  # config imports models; keep it lazy

    return parse_duration(value)


Cpu = Annotated[float, BeforeValidator(parse_cpu), Field(ge=0, le=1024, allow_inf_nan=False)]
Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0, le=2**62)]
Seconds = Annotated[
    float, BeforeValidator(parse_seconds), Field(ge=0, le=30 * 24 * 3600, allow_inf_nan=False)
]
EnvName = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Arg = Annotated[str, StringConstraints(strict=True, max_length=8192)]
PathText = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=1024)]


class ResourceRequest(Model):
    cpu: Cpu = 0.0
    memory: Bytes = 0
    disk: Bytes = 0
    gpu: Annotated[int, Strict(), Field(ge=0, le=64)] = 0

    def as_resources(self) -> Resources:
        return Resources(cpu=self.cpu, memory=self.memory, disk=self.disk, gpu=self.gpu)


# Fields of other schedulers' specs (Docker, Compose, Kubernetes) that would reach
# outside the container. Hive has no such fields; a spec that asks is refused by name
# rather than having them silently dropped.
_REFUSED_FIELDS = {
    "privileged": "privileged mode is not allowed",
    "cap_add": "extra capabilities are not allowed",
    "capabilities": "extra capabilities are not allowed",
    "devices": "device access is not allowed (ask for GPUs with resources.gpu)",
    "mounts": "host mounts are not allowed (collect results with outputs)",
    "volumes": "host mounts are not allowed (collect results with outputs)",
    "binds": "host mounts are not allowed (collect results with outputs)",
    "host_path": "host paths are not allowed",
    "pid_mode": "sharing the host's PID namespace is not allowed",
    "ipc_mode": "sharing the host's IPC namespace is not allowed",
    "user_ns_mode": "leaving the user namespace is not allowed",
    "security_opt": "changing security options is not allowed",
}
_DOCKER_SOCKET = "docker.sock"


class JobSpec(Model):
    """What an operator asks for; validated whole before anything is stored."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_escapes(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in _REFUSED_FIELDS.items():
                if data.get(name) not in (None, False, "", [], {}):
                    raise ValueError(f"{name}: {why}")
        return data

    name: Annotated[str, StringConstraints(strict=True, max_length=128)] = ""
    type: JobType = JobType.BATCH
    engine: Engine = Engine.DOCKER
    image: Annotated[str, StringConstraints(strict=True, max_length=512)] = ""
    command: Annotated[list[Arg], Field(max_length=256)] = Field(default_factory=list)
    env: Annotated[dict[EnvName, Arg], Field(max_length=256)] = Field(default_factory=dict)
    workdir: Annotated[str, StringConstraints(strict=True, max_length=1024)] = ""
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    constraints: Annotated[list[ShortText], Field(max_length=32)] = Field(default_factory=list)
    count: Annotated[int, Strict(), Field(ge=1, le=1000)] = 1
    timeout: Seconds = 0.0  # execution timeout; 0: none
    queue_timeout: Seconds = 300.0  # how long it may wait for a node
    retries: Annotated[int, Strict(), Field(ge=0, le=10)] = 0
    network: Literal["none", "bridge", "host"] = "none"
    outputs: Annotated[list[PathText], Field(max_length=16)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.engine is Engine.DOCKER and not self.image:
            raise ValueError("a docker job needs an image")
        if self.engine is Engine.PROCESS and not self.command:
            raise ValueError("a process job needs a command")
        if self.engine is Engine.PROCESS and self.network != "none":
            raise ValueError("network applies to docker jobs only")
        if any(_DOCKER_SOCKET in arg for arg in (*self.outputs, self.workdir)):
            raise ValueError("the Docker socket is not available to jobs")
        try:
            parse_selector(",".join(self.constraints))
        except SelectorError as exc:
            raise ValueError(f"constraints: {exc}") from None
        return self

    @property
    def selector(self) -> str:
        return ",".join(self.constraints)


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


class Job(Model):
    job_id: JobId
    spec: JobSpec
    state: JobState = JobState.PENDING
    reason: Reason = ""
    executions: list[Execution] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


# -- requester <-> node ------------------------------------------------------------------


class Offer(Message):
    """`hive.compute.<node>.offer`, sealed with the node's key; answered by OfferReply."""

    kind: ClassVar[str] = "offer"
    node_id: NodeId
    exec_id: ExecId
    job_id: JobId
    attempt: NonNegInt = 0
    spec: JobSpec


class OfferReply(Message):
    kind: ClassVar[str] = "offer_reply"
    exec_id: ExecId
    accepted: Annotated[bool, Strict()]
    reason: Reason = ""


class Cancel(Message):
    """`hive.compute.<node>.cancel`, sealed; answered by OkReply (also for unknown ids)."""

    kind: ClassVar[str] = "cancel"
    node_id: NodeId
    exec_id: ExecId
    reason: Reason = ""


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


# -- hivectl <-> requester ---------------------------------------------------------------


class JobSubmitRequest(Message):
    kind: ClassVar[str] = "job_submit"
    spec: JobSpec


class JobSubmitReply(Message):
    kind: ClassVar[str] = "job_submit_reply"
    job_id: JobId


class JobListRequest(Message):
    kind: ClassVar[str] = "job_list"
    state: JobState | None = None
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


register_messages(
    Offer,
    OfferReply,
    Cancel,
    ExecUpdate,
    JobSubmitRequest,
    JobSubmitReply,
    JobListRequest,
    JobListReply,
    JobGetRequest,
    JobGetReply,
    JobStopRequest,
    JobEvent,
)

# Logs: each chunk of output is one message on `hive.logs.<job>.<exec>` (stream
# HIVE_LOGS) whose data is the raw bytes and whose headers say which stream it came
# from; the last message of an execution carries LOG_EOF_HEADER with the exit code.
LOG_STREAM_HEADER = "Hive-Stream"  # "stdout" | "stderr"
LOG_EOF_HEADER = "Hive-Eof"  # exit code as text; no data
LOG_DROPPED_HEADER = "Hive-Dropped"  # on the EOF message: bytes the node's log cap left out
