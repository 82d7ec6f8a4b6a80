"""Wire and storage models: node records, node messages, API requests and replies.

Every message is a pydantic model with a protocol version `v` and a `kind` that names
it on the wire; `codec.py` turns the registry below into msgpack and back. Field
limits here are the input limits of the whole system: a value a model refuses never
reaches a daemon's logic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints

PROTOCOL_VERSION = 1

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# Scalars are strict (no "5" -> 5 coercion); enums and datetimes accept their wire strings.
NodeId = Annotated[str, StringConstraints(strict=True, pattern=ID_PATTERN)]
LabelKey = Annotated[
    str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
]
LabelValue = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9._-]{0,63}$")]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=64)]
# A node's merged labels (hivectl.core.labels): Hive's own, the node's and the operator's.
MergedLabels = Annotated[dict[LabelKey, LabelValue], Field(max_length=192)]
ShortText = Annotated[str, StringConstraints(strict=True, max_length=256)]
Reason = Annotated[str, StringConstraints(strict=True, max_length=1024)]
PublicKey = Annotated[str, StringConstraints(strict=True, pattern=r"^U[A-Z2-7]{55}$")]
ExecId = Annotated[str, StringConstraints(strict=True, pattern=r"^e-[0-9a-f]{16}$")]
# The executions one node holds, as it reports them (a node runs hundreds, not thousands).
MAX_HELD = 4096
NonNegInt = Annotated[int, Strict(), Field(ge=0, le=2**62)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0, le=1e12, allow_inf_nan=False)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Approval(StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class Health(StrEnum):
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    UNKNOWN = "UNKNOWN"


class NodeType(StrEnum):
    REQUESTER = "Requester"
    COMPUTE = "Compute"


class Model(BaseModel):
    """Base for everything on the wire or in a bucket.

    Unknown fields are ignored rather than refused, so a newer peer can add fields;
    this is also what makes a node's attempt to send `approval` a no-op.
    """

    # defer_build: each program builds the validators of the models it uses, on first
    # use; building all ~50 at import cost every `hivectl` command 10 ms.
    model_config = ConfigDict(extra="ignore", defer_build=True)


class Resources(Model):
    cpu: NonNegFloat = 0.0  # cores
    memory: NonNegInt = 0  # bytes
    disk: NonNegInt = 0  # bytes
    gpu: NonNegInt = 0  # devices

    def fits(self, other: Resources) -> bool:
        """True when `other` fits inside these resources."""
        return (
            other.cpu <= self.cpu + 1e-9
            and other.memory <= self.memory
            and other.disk <= self.disk
            and other.gpu <= self.gpu
        )

    def minus(self, other: Resources) -> Resources:
        # Built from two validated values and clamped at zero: nothing to re-validate
        # (the scheduler does this for every node of every placement).
        return Resources.model_construct(
            cpu=max(0.0, round(self.cpu - other.cpu, 6)),
            memory=max(0, self.memory - other.memory),
            disk=max(0, self.disk - other.disk),
            gpu=max(0, self.gpu - other.gpu),
        )


class GpuInfo(Model):
    index: NonNegInt
    vendor: ShortText = "nvidia"
    model: ShortText
    memory: NonNegInt  # bytes
    uuid: ShortText = ""


class NodeInfo(Model):
    """What a node says about itself; kept in its record, refreshed when it changes."""

    hostname: ShortText
    arch: ShortText
    os: ShortText
    version: ShortText
    labels: Labels = Field(default_factory=dict)
    executors: Annotated[list[ShortText], Field(max_length=8)] = Field(default_factory=list)
    # Executors the node's config enables but that cannot run jobs now, each with why
    # (its Docker engine does not answer, say). They are left out of `executors` until
    # they work again, so nothing is placed on them meanwhile.
    unavailable: Annotated[dict[ShortText, ShortText], Field(max_length=8)] = Field(
        default_factory=dict
    )
    total: Resources = Field(default_factory=Resources)
    allocatable: Resources = Field(default_factory=Resources)
    gpus: Annotated[list[GpuInfo], Field(max_length=64)] = Field(default_factory=list)
    benchmark_score: NonNegFloat = 0.0
    # Executions the node runs at once at most (its config's max_executions); 0: no
    # limit but resources. The requester offers a node at its limit nothing.
    max_executions: NonNegInt = 0


class NodeResources(Model):
    """A resource report: what the machine has, what Hive may use, what is free now."""

    total: Resources
    allocatable: Resources
    available: Resources


# A drain's deadline is at most this far off (seconds): a datetime cannot hold much more.
MAX_DRAIN_DEADLINE = 10 * 365 * 24 * 3600.0


class Drain(Model):
    """A drain of a node: asked for by an operator, carried out by the leading requester.

    Kept in the node record, so a requester that restarts, or another that takes the
    lead, carries on where the last one was. `remaining` and `moved` are the leader's
    progress; `ended_at` and `outcome` say how the drain ended (the record keeps the
    last one until the next drain).
    """

    started_at: datetime
    deadline: datetime | None = None  # None: batch work may run as long as it takes
    force: Annotated[bool, Strict()] = False
    reason: Reason = ""
    remaining: NonNegInt | None = None  # batch executions left on the node; None: not counted yet
    moved: NonNegInt = 0  # executions moved to other nodes at the deadline
    ended_at: datetime | None = None
    outcome: ShortText = ""  # "drained" or "cancelled", once ended

    @property
    def active(self) -> bool:
        return self.ended_at is None


class NodeRecord(Model):
    """A node as the requester stores it in the `hive_nodes` bucket."""

    node_id: NodeId
    public_key: PublicKey
    info: NodeInfo
    approval: Approval = Approval.PENDING
    reason: Reason = ""
    registered_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Set by operators (`hivectl node label`, enrollment tokens), never by the node: they
    # win over the labels in its info and outlive its restarts and re-registrations.
    operator_labels: Labels = Field(default_factory=dict)
    # An operator took the node out of service: no new executions; what runs goes on.
    cordoned: Annotated[bool, Strict()] = False
    cordon_reason: Reason = ""
    drain: Drain | None = None

    @property
    def draining(self) -> bool:
        return self.drain is not None and self.drain.active


# -- messages ------------------------------------------------------------------------


class Message(Model):
    """A wire message: `kind` names its model in `MESSAGES`."""

    v: Annotated[int, Strict(), Field(ge=1, le=PROTOCOL_VERSION)] = PROTOCOL_VERSION
    kind: ClassVar[str]


class RegisterRequest(Message):
    kind: ClassVar[str] = "register"
    node_id: NodeId
    public_key: PublicKey
    info: NodeInfo
    # An enrollment token (`<id>.<secret>`, from `hivectl node token create`): a valid
    # one approves the node at registration; any other leaves it PENDING with the reason.
    token: Annotated[str, StringConstraints(strict=True, max_length=256)] = ""


class RegisterReply(Message):
    kind: ClassVar[str] = "register_reply"
    node_id: NodeId
    approval: Approval
    requester_key: PublicKey  # the node derives its message key from this
    cluster: ShortText = ""
    # Seconds without a heartbeat after which the requester writes the node's work off
    # (LOST) and places it again: the node stops that work itself before then (0: the
    # requester does not say, and the node fences nothing).
    lost_after: NonNegFloat = 0.0
    reason: Reason = ""  # why the node is PENDING (an enrollment token refused), if it is


class InfoUpdate(Message):
    kind: ClassVar[str] = "info"
    node_id: NodeId
    info: NodeInfo
    seq: NonNegInt = 0  # moves forward when `executions` is sent: a replay says nothing
    # The executions the node holds (running, or ended with the report still to go
    # out), so the requester can compare them with its own records; None: not said.
    executions: Annotated[list[ExecId], Field(max_length=MAX_HELD)] | None = None


class InfoReply(Message):
    kind: ClassVar[str] = "info_reply"
    known: Annotated[bool, Strict()]
    approval: Approval | None = None
    lost_after: NonNegFloat = 0.0  # as in RegisterReply
    # Executions the node reported that the requester has no active record of on it
    # (written off, re-placed, finished or unknown): the node stops them.
    stale: Annotated[list[ExecId], Field(max_length=MAX_HELD)] = Field(default_factory=list)


class ResourceUpdate(Message):
    kind: ClassVar[str] = "resources"
    node_id: NodeId
    seq: NonNegInt
    resources: NodeResources


class Heartbeat(Message):
    kind: ClassVar[str] = "heartbeat"
    node_id: NodeId
    seq: NonNegInt


class Leave(Message):
    kind: ClassVar[str] = "leave"
    node_id: NodeId
    seq: NonNegInt
    reason: Reason = ""


class ErrorReply(Message):
    kind: ClassVar[str] = "error"
    code: ShortText
    reason: Reason


class OkReply(Message):
    kind: ClassVar[str] = "ok"
    id: ShortText = ""


class NodeEvent(Message):
    """Published on `hive.events.node.<id>` for every approval or health change, and
    every cordon, uncordon, drain start and drain end."""

    kind: ClassVar[str] = "node_event"
    node_id: NodeId
    event: Literal[
        "registered", "approval", "health", "deleted", "labels", "cordon", "uncordon", "drain"
    ]
    old: ShortText = ""
    new: ShortText = ""
    reason: Reason = ""
    at: datetime = Field(default_factory=utcnow)
    # Who caused it: the operator an API request named (its Hive-Actor header), else
    # `requester:<name>` for what the requester decided itself (health, pruning).
    actor: ShortText = ""


def message_registry(*models: type[Message]) -> dict[str, type[Message]]:
    """Map each model's `kind` to the model; a duplicate kind is a programming error."""
    registry: dict[str, type[Message]] = {}
    for model in models:
        if model.kind in registry:
            raise ValueError(f"duplicate message kind {model.kind!r}")
        registry[model.kind] = model
    return registry


MESSAGES: dict[str, type[Message]] = message_registry(
    RegisterRequest,
    RegisterReply,
    InfoUpdate,
    InfoReply,
    ResourceUpdate,
    Heartbeat,
    Leave,
    ErrorReply,
    OkReply,
    NodeEvent,
)


def register_messages(*models: type[Message]) -> None:
    """Add message models defined elsewhere in hivectl.core (API, jobs) to the registry."""
    for model in models:
        if model.kind in MESSAGES and MESSAGES[model.kind] is not model:
            raise ValueError(f"duplicate message kind {model.kind!r}")
        MESSAGES[model.kind] = model


def build_models() -> int:
    """Build every model's validator now; how many were built.

    For the daemons, once at start, before any thread runs: models are built on first
    use (see `Model`), and two threads that first use related models at once can race
    in pydantic's schema building (a model then reads as "not fully defined"). The CLI,
    one thread, keeps building only what a command needs.
    """
    import hivectl.core.api
    import hivectl.core.jobs
    import hivectl.core.tokens  # noqa: F401  (every wire model is defined once imported)

    built, pending = 0, list(Model.__subclasses__())
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if not model.__pydantic_complete__:
            model.model_rebuild()
            built += 1
    return built
