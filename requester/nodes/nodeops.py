"""The operator API for taking nodes out of service: `hive.api.node.{cordon,uncordon,drain}`.

Served beside the other node verbs (its handlers join NodeApi's). Any requester may
answer: each verb is one compare-and-set on the node record and the events that change
makes; carrying out a drain is the leader's (see drain.py), from what the record says.
"""

from __future__ import annotations

import functools

from hivectl.core import codec
from hivectl.core.api import NodeCordonRequest, NodeDrainRequest, NodeUncordonRequest
from hivectl.core.models import Message, OkReply, utcnow
from requester.nodes import drain
from requester.nodes.registry import RecordChange, Registry, RegistryError
from requester.routing import ApiRouter


class NodeOps(ApiRouter):
    noun = "node"

    def __init__(self, registry: Registry, *, requester_id: str, limits: codec.Limits) -> None:
        super().__init__()
        self._registry = registry
        self._requester_id = requester_id
        self._limits = limits
        self.handlers.update(cordon=self.cordon, uncordon=self.uncordon, drain=self.drain)

    async def cordon(self, data: bytes) -> Message:
        request = codec.decode(data, NodeCordonRequest, self._limits)
        change = functools.partial(drain.cordoned, reason=request.reason)
        return await self._apply(request.id, change, request.reason)

    async def uncordon(self, data: bytes) -> Message:
        request = codec.decode(data, NodeUncordonRequest, self._limits)
        change = functools.partial(drain.uncordoned, now=utcnow())
        return await self._apply(request.id, change, request.reason)

    async def drain(self, data: bytes) -> Message:
        request = codec.decode(data, NodeDrainRequest, self._limits)
        change: RecordChange
        if request.cancel:
            change = functools.partial(drain.drain_cancelled, now=utcnow())
        else:
            change = functools.partial(
                drain.drain_started,
                now=utcnow(),
                deadline=request.deadline,
                force=request.force,
                reason=request.reason,
            )
        return await self._apply(request.id, change, request.reason)

    async def _apply(self, prefix: str, change: RecordChange, reason: str) -> Message:
        if prefix == self._requester_id:
            raise RegistryError("invalid", "the requester runs no jobs: it cannot be taken out")
        node_id = self._registry.resolve(prefix)
        before, after = await self._registry.change(node_id, change)
        for event in drain.transitions(before, after, reason):
            await self._registry.emit(event)
        return OkReply(id=node_id)
