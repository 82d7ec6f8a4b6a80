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
    Approval,
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
    Reason,
    ShortText,
    register_messages,
)

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


class NodeListRequest(Message):
    kind: ClassVar[str] = "node_list"
    approval: Approval | None = None
    health: Health | None = None
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


class NodeRejectRequest(Message):
    kind: ClassVar[str] = "node_reject"
    id: IdPrefix
    reason: Reason = ""


class NodeDeleteRequest(Message):
    kind: ClassVar[str] = "node_delete"
    id: IdPrefix


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
)
