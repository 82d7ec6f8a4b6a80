"""The operator API for nodes: `hive.api.node.{list,get,approve,reject,delete}`.

Reads come from memory (the registry's view and liveness), never from a bucket scan.
Lists are paged so that one reply never exceeds the server's max_payload, however many
nodes there are and however many labels they carry.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

from hivectl.core import codec
from hivectl.core.api import (
    NodeApproveRequest,
    NodeDeleteRequest,
    NodeGetReply,
    NodeGetRequest,
    NodeListRequest,
    NodeRejectRequest,
    NodeView,
)
from hivectl.core.models import (
    Approval,
    Health,
    Message,
    NodeRecord,
    NodeType,
    OkReply,
)
from hivectl.core.reliability import Reliability
from hivectl.core.selectors import Selector, SelectorError, parse_selector
from requester.nodes import pages
from requester.nodes.liveness import Liveness
from requester.nodes.registry import Registry, RegistryError
from requester.routing import REPLY_HEADROOM, ApiRouter

log = logging.getLogger("hive.requester.api")


class NodeApi(ApiRouter):
    noun = "node"

    def __init__(
        self,
        registry: Registry,
        liveness: Liveness,
        *,
        requesters: Callable[[], list[NodeView]],
        max_payload: int,
        on_delete: Callable[[str], None],
        limits: codec.Limits,
        reliability: Callable[[str], Reliability] | None = None,
        scores: Mapping[str, float] | None = None,
    ) -> None:
        self._registry = registry
        self._reliability = reliability
        self._reliab_parts = (
            None
            if reliability is None
            else pages.ReliabilityParts(reliability, {} if scores is None else scores)
        )
        self._liveness = liveness
        self._max_reply = max_payload - REPLY_HEADROOM
        self._on_delete = on_delete
        self._limits = limits
        self._requesters = requesters  # this one and the others of its cluster
        self._pages = pages.NodePages(registry.labels)
        super().__init__()
        self.handlers.update(
            list=self.list_nodes,
            get=self.get_node,
            approve=self.approve_node,
            reject=self.reject_node,
            delete=self.delete_node,
        )

    # -- verbs ----------------------------------------------------------------------
    async def list_nodes(self, data: bytes) -> bytes:
        request = codec.decode(data, NodeListRequest, self._limits)
        try:
            selector = parse_selector(request.selector)
        except SelectorError as exc:
            raise RegistryError("invalid", str(exc)) from None
        if not request.after and len(self._pages) > len(self._registry):
            self._pages.forget_missing(self._registry.ids())
        return self._page(self._matching(request, selector), request.limit)

    def _matching(
        self, request: NodeListRequest, selector: Selector
    ) -> Iterator[tuple[str, bytes]]:
        """(id, packed view) of the nodes that pass the request's filters: the requester
        first, then the nodes by id."""
        if not request.after:  # requesters first, on the first page
            for me in self._requesters():
                wanted = _wanted(request, selector, me.approval, me.health, me.labels)
                if wanted and _in_service_wanted(request, me):
                    yield me.node_id, pages.whole_view(me)
        liveness, registry = self._liveness, self._registry
        ids = registry.sorted_ids()
        for node_id in itertools.islice(ids, bisect.bisect_right(ids, request.after), None):
            record = registry.get(node_id)
            if record is None:
                continue
            health = liveness.health(node_id)
            if not _in_service_wanted(request, record):
                continue
            if _wanted(request, selector, record.approval, health, registry.labels(record)):
                resources, heard = liveness.resources(node_id), liveness.last_heard(node_id)
                parts = self._reliab_parts
                reliab = None if parts is None else parts.part(node_id)
                yield node_id, self._pages.view(record, health, resources, heard, reliab)

    def _page(self, views: Iterator[tuple[str, bytes]], limit: int) -> bytes:
        """Up to `limit` views, as many as fit in one message; `next` says where to go on.

        A page ends early when one more view would not fit under max_payload (nodes
        with many labels and GPUs are big), so every reply can be sent.
        """
        page: list[bytes] = []
        size = pages.PAGE_OVERHEAD
        last = ""
        for node_id, view in views:
            if len(page) == limit or (page and size + len(view) > self._max_reply):
                return pages.page(page, last)
            page.append(view)
            size += len(view)
            last = node_id
        return pages.page(page, "")

    async def get_node(self, data: bytes) -> Message:
        request = codec.decode(data, NodeGetRequest, self._limits)
        for me in self._requesters():
            if request.id == me.node_id:
                return NodeGetReply(node=me)
        record = self._record(request.id)
        view = self.view(record)
        if self._reliability is not None:
            view.reliability = self._reliability(record.node_id)
        return NodeGetReply(node=view)

    async def approve_node(self, data: bytes) -> Message:
        request = codec.decode(data, NodeApproveRequest, self._limits)
        record = self._record(request.id)
        await self._registry.set_approval(record.node_id, Approval.APPROVED, request.reason)
        return OkReply(id=record.node_id)

    async def reject_node(self, data: bytes) -> Message:
        request = codec.decode(data, NodeRejectRequest, self._limits)
        record = self._record(request.id)
        await self._registry.set_approval(record.node_id, Approval.REJECTED, request.reason)
        return OkReply(id=record.node_id)

    async def delete_node(self, data: bytes) -> Message:
        request = codec.decode(data, NodeDeleteRequest, self._limits)
        record = self._record(request.id)
        await self._registry.delete(record.node_id, request.reason)
        self._on_delete(record.node_id)
        return OkReply(id=record.node_id)

    # -- helpers --------------------------------------------------------------------
    def _record(self, prefix: str) -> NodeRecord:
        if any(prefix == me.node_id for me in self._requesters()):
            raise RegistryError("invalid", f"{prefix!r} is a requester: only nodes can be changed")
        record = self._registry.get(self._registry.resolve(prefix))
        if record is None:  # deleted between resolve and get
            raise RegistryError("not_found", f"node {prefix!r} not found")
        return record

    def view(self, record: NodeRecord) -> NodeView:
        node_id = record.node_id
        heard = self._liveness.last_heard(node_id)
        return NodeView.model_construct(
            node_id=node_id,
            type=NodeType.COMPUTE,
            approval=record.approval,
            health=self._liveness.health(node_id),
            reason=record.reason,
            public_key=record.public_key,
            info=record.info,
            resources=self._liveness.resources(node_id),
            last_heartbeat=None if heard is None else datetime.fromtimestamp(heard, UTC),
            registered_at=record.registered_at,
            updated_at=record.updated_at,
            labels=dict(self._registry.labels(record)),
            operator_labels=record.operator_labels,
            cordoned=record.cordoned,
            cordon_reason=record.cordon_reason,
            drain=record.drain,
        )


def _wanted(
    request: NodeListRequest,
    selector: Selector,
    approval: Approval,
    health: Health,
    labels: Mapping[str, str],
) -> bool:
    return (
        (request.approval is None or approval == request.approval)
        and (request.health is None or health == request.health)
        and selector.matches(labels)
    )


def _in_service_wanted(request: NodeListRequest, record: NodeRecord | NodeView) -> bool:
    """The cordon and drain filters (`--filter-status cordoned`, say)."""
    return (request.cordoned is None or record.cordoned == request.cordoned) and (
        request.draining is None or record.draining == request.draining
    )
