"""Requests and replies of the operator API (`hive.api.<noun>.<verb>`).

Ids in requests may be unique prefixes; the requester resolves them and answers with
an `ErrorReply` whose code is `not_found` or `ambiguous` when it cannot.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

from pydantic import Field, Strict, StringConstraints

from hivectl.core.models import (
    MAX_DRAIN_DEADLINE,
    Approval,
    Drain,
    Health,
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
    cordoned: Annotated[bool, Strict()] = False
    cordon_reason: Reason = ""
    drain: Drain | None = None

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


class NodeRejectRequest(Message):
    kind: ClassVar[str] = "node_reject"
    id: IdPrefix
    reason: Reason = ""


class NodeDeleteRequest(Message):
    kind: ClassVar[str] = "node_delete"
    id: IdPrefix


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
    NodeCordonRequest,
    NodeUncordonRequest,
    NodeDrainRequest,
)
