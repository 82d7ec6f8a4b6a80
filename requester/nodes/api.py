"""The operator API for nodes: `hive.api.node.{list,get,approve,reject,delete}`.

Reads come from memory (the registry's view and liveness), never from a bucket scan.
Lists are paged so that one reply never exceeds the server's max_payload, however many
nodes there are and however many labels they carry.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import platform
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import hivectl
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
    NodeInfo,
    NodeRecord,
    NodeType,
    OkReply,
)
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
        requester_id: str,
        requester_key: str,
        max_payload: int,
        on_delete: Callable[[str], None],
        limits: codec.Limits,
    ) -> None:
        self._registry = registry
        self._liveness = liveness
        self._max_reply = max_payload - REPLY_HEADROOM
        self._on_delete = on_delete
        self._limits = limits
        self._self_view = _requester_view(requester_id, requester_key)
        self._self_bytes = pages.whole_view(self._self_view)
        self._pages = pages.NodePages()
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
        me = self._self_view
        wanted = _wanted(request, selector, me.approval, me.health, {})
        if not request.after and wanted and _in_service_wanted(request, me):
            yield me.node_id, self._self_bytes
        liveness, registry = self._liveness, self._registry
        ids = registry.sorted_ids()
        for node_id in itertools.islice(ids, bisect.bisect_right(ids, request.after), None):
            record = registry.get(node_id)
            if record is None:
                continue
            health = liveness.health(node_id)
            if not _in_service_wanted(request, record):
                continue
            if _wanted(request, selector, record.approval, health, record.info.labels):
                resources, heard = liveness.resources(node_id), liveness.last_heard(node_id)
                yield node_id, self._pages.view(record, health, resources, heard)

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
        if request.id == self._self_view.node_id:
            return NodeGetReply(node=self._self_view)
        record = self._record(request.id)
        return NodeGetReply(node=self.view(record))

    async def approve_node(self, data: bytes) -> Message:
        request = codec.decode(data, NodeApproveRequest, self._limits)
        record = self._record(request.id)
        await self._registry.set_approval(record.node_id, Approval.APPROVED)
        return OkReply(id=record.node_id)

    async def reject_node(self, data: bytes) -> Message:
        request = codec.decode(data, NodeRejectRequest, self._limits)
        record = self._record(request.id)
        await self._registry.set_approval(record.node_id, Approval.REJECTED, request.reason)
        return OkReply(id=record.node_id)

    async def delete_node(self, data: bytes) -> Message:
        request = codec.decode(data, NodeDeleteRequest, self._limits)
        record = self._record(request.id)
        await self._registry.delete(record.node_id)
        self._on_delete(record.node_id)
        return OkReply(id=record.node_id)

    # -- helpers --------------------------------------------------------------------
    def _record(self, prefix: str) -> NodeRecord:
        if prefix == self._self_view.node_id:
            raise RegistryError("invalid", "the requester itself cannot be changed")
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
            cordoned=record.cordoned,
            cordon_reason=record.cordon_reason,
            drain=record.drain,
        )


def _wanted(
    request: NodeListRequest,
    selector: Selector,
    approval: Approval,
    health: Health,
    labels: dict[str, str],
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


def _requester_view(requester_id: str, public_key: str) -> NodeView:
    """The requester lists itself, as in Bacalhau: type Requester, APPROVED, HEALTHY."""
    info = NodeInfo(
        hostname=socket.gethostname()[:256],
        arch=platform.machine()[:256],
        os=platform.system().lower()[:256],
        version=hivectl.__version__,
    )
    return NodeView(
        node_id=requester_id,
        type=NodeType.REQUESTER,
        approval=Approval.APPROVED,
        health=Health.HEALTHY,
        public_key=public_key,
        info=info,
    )
