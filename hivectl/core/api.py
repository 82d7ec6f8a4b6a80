"""Requests and replies of the operator API (`hive.api.<noun>.<verb>`).

Ids in requests may be unique prefixes; the requester resolves them and answers with
an `ErrorReply` whose code is `not_found` or `ambiguous` when it cannot.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

from pydantic import Field, Strict, StringConstraints, field_validator, model_validator

from hivectl.core.labels import LabelEditError, check_operator_labels
from hivectl.core.models import (
    MAX_DRAIN_DEADLINE,
    Approval,
    Drain,
    Health,
    LabelKey,
    Labels,
    MergedLabels,
    Message,
    Model,
    NodeId,
    NodeInfo,
    NodeResources,
    NodeType,
    NonNegFloat,
    NonNegInt,
    Reason,
    ShortText,
    register_messages,
)
from hivectl.core.reliability import Reliability

# The header on every API request that names the operator who sends it (`actor` in
# hivectl.toml, HIVE_ACTOR, else <os user>@<hostname>). What the client claims: the NATS
# credential proves only the operator role, not who holds it.
ACTOR_HEADER = "Hive-Actor"
# Verbs of `hive.api.node.<verb>` served outside requester/nodes/api.py.
TOKEN_CREATE, TOKEN_LIST, TOKEN_REVOKE, NODE_PRUNE = (
    "token_create",
    "token_list",
    "token_revoke",
    "prune",
)
MAX_PRUNE = 10_000  # nodes one prune request lists or removes

IdPrefix = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Selector = Annotated[str, StringConstraints(strict=True, max_length=1024)]
PAGE_SIZE = 1000


class NodeView(Model):
    """A node as operators see it: its record joined with live health and resources."""

    node_id: NodeId
    type: NodeType = NodeType.COMPUTE
    approval: Approval
    health: Health
    reason: Reason = ""
    public_key: ShortText = ""
    info: NodeInfo | None = None
    resources: NodeResources | None = None
    last_heartbeat: datetime | None = None  # the requester's clock, when it last heard
    registered_at: datetime | None = None
    updated_at: datetime | None = None
    # What scheduling and `-l` match: Hive's `hive.io/` labels < the node's own
    # (`info.labels`) < the operator's (`operator_labels`).
    labels: MergedLabels = Field(default_factory=dict)
    operator_labels: Labels = Field(default_factory=dict)
    cordoned: Annotated[bool, Strict()] = False
    cordon_reason: Reason = ""
    drain: Drain | None = None
    # Its record of work that ended there (node get; node list when the requester knows
    # one): placement prefers higher scores and keeps jobs off nodes below their minimum.
    reliability: Reliability | None = None

    @property
    def draining(self) -> bool:
        return self.drain is not None and self.drain.active


class NodeListRequest(Message):
    kind: ClassVar[str] = "node_list"
    approval: Approval | None = None
    health: Health | None = None
    cordoned: Annotated[bool, Strict()] | None = None  # draining nodes are cordoned too
    draining: Annotated[bool, Strict()] | None = None
    selector: Selector = ""  # label selector, as in `hivectl node list -l`
    after: ShortText = ""  # paging: ids sort ascending; start after this one
    limit: Annotated[int, Strict(), Field(ge=1, le=PAGE_SIZE)] = PAGE_SIZE


class NodeListReply(Message):
    kind: ClassVar[str] = "node_list_reply"
    nodes: list[NodeView]
    next: ShortText = ""  # non-empty: ask again with after=next


class NodeGetRequest(Message):
    kind: ClassVar[str] = "node_get"
    id: IdPrefix


class NodeGetReply(Message):
    kind: ClassVar[str] = "node_get_reply"
    node: NodeView


class NodeApproveRequest(Message):
    kind: ClassVar[str] = "node_approve"
    id: IdPrefix
    reason: Reason = ""


class NodeRejectRequest(Message):
    kind: ClassVar[str] = "node_reject"
    id: IdPrefix
    reason: Reason = ""


class NodeDeleteRequest(Message):
    kind: ClassVar[str] = "node_delete"
    id: IdPrefix
    reason: Reason = ""


class NodePruneRequest(Message):
    """Delete the records of nodes UNKNOWN for at least `unknown_for` seconds, as the
    requester that answers has seen them (see requester/nodes/prune.py). `dry_run` only
    lists them; `ids`, when given, limits the removal to those (the ones an operator
    confirmed)."""

    kind: ClassVar[str] = "node_prune"
    unknown_for: Annotated[float, Strict(), Field(ge=0, le=1e9, allow_inf_nan=False)]
    dry_run: Annotated[bool, Strict()] = True
    ids: Annotated[list[NodeId], Field(max_length=MAX_PRUNE)] | None = None
    reason: Reason = ""


class PruneCandidate(Model):
    node_id: NodeId
    approval: Approval
    unknown_for: NonNegFloat  # seconds, as far as the requester that answered has seen


class NodePruneReply(Message):
    kind: ClassVar[str] = "node_prune_reply"
    nodes: Annotated[list[PruneCandidate], Field(max_length=MAX_PRUNE)]
    pruned: Annotated[bool, Strict()] = False  # False: only listed (a dry run)
    more: NonNegInt = 0  # matching nodes left out (over MAX_PRUNE): prune again
    # How long the requester that answered has watched heartbeats: no node is UNKNOWN
    # for longer than that as far as it knows.
    watching_for: NonNegFloat = 0.0


class NodeLabelRequest(Message):
    """Set and remove a node's operator labels. A label the operator has already set
    keeps its value unless `overwrite`; removing one it has not set changes nothing."""

    kind: ClassVar[str] = "node_label"
    id: IdPrefix
    labels: Labels = Field(default_factory=dict)  # to set
    remove: Annotated[list[LabelKey], Field(max_length=64)] = Field(default_factory=list)
    overwrite: Annotated[bool, Strict()] = False
    reason: Reason = ""

    @field_validator("labels", "remove")
    @classmethod
    def _not_reserved(cls, value: dict[str, str] | list[str]) -> dict[str, str] | list[str]:
        try:
            check_operator_labels(list(value))
        except LabelEditError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _each_key_once(self) -> NodeLabelRequest:
        both = sorted(set(self.labels) & set(self.remove))
        if both:
            raise ValueError(f"label {both[0]!r} is both set and removed")
        return self


class NodeLabelReply(Message):
    kind: ClassVar[str] = "node_label_reply"
    id: NodeId
    operator_labels: Labels = Field(default_factory=dict)  # as they are now
    labels: MergedLabels = Field(default_factory=dict)  # the merged set, now
    # Keys asked to be removed that the operator had not set (perhaps the node's own).
    not_set: Annotated[list[LabelKey], Field(max_length=64)] = Field(default_factory=list)


class NodeCordonRequest(Message):
    """Take a node out of service: it gets no new executions; what runs goes on."""

    kind: ClassVar[str] = "node_cordon"
    id: IdPrefix
    reason: Reason = ""


class NodeUncordonRequest(Message):
    """Put a node back in service; a drain still going on ends (cancelled)."""

    kind: ClassVar[str] = "node_uncordon"
    id: IdPrefix
    reason: Reason = ""


DrainDeadline = Annotated[float, Strict(), Field(ge=0, le=MAX_DRAIN_DEADLINE)]


class NodeDrainRequest(Message):
    """Start (or change) a node's drain, or with `cancel`, end it (the node stays cordoned)."""

    kind: ClassVar[str] = "node_drain"
    id: IdPrefix
    deadline: DrainDeadline | None = 3600.0  # seconds from now; None: no deadline
    force: Annotated[bool, Strict()] = False  # move the batch work off now
    cancel: Annotated[bool, Strict()] = False
    reason: Reason = ""


register_messages(
    NodeListRequest,
    NodeListReply,
    NodeGetRequest,
    NodeGetReply,
    NodeApproveRequest,
    NodeRejectRequest,
    NodeDeleteRequest,
    NodeLabelRequest,
    NodeLabelReply,
    NodePruneRequest,
    NodePruneReply,
    NodeCordonRequest,
    NodeUncordonRequest,
    NodeDrainRequest,
)
