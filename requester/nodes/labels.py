"""`hive.api.node.label`: operators set and remove a node's operator labels.

They live in the node record (`operator_labels`), written by compare-and-set, so they
outlive the agent's restarts and re-registrations, and nothing a node sends touches
them (membership only ever writes `info`). Scheduling and selectors see them through
`Registry.labels`, merged over Hive's `hive.io/` labels and the node's own.

kubectl's rules: setting a label the operator already set to another value is refused
unless `overwrite`; overriding a label the node reports itself needs no overwrite (that
is what operator labels are for, and removing the operator's brings the node's back).
"""

from __future__ import annotations

import logging

from hivectl.core import codec
from hivectl.core.api import NodeLabelReply, NodeLabelRequest
from hivectl.core.labels import MAX_LABELS
from hivectl.core.models import Message, NodeEvent, NodeRecord, ShortText
from requester.nodes.registry import EventSink, Registry, RegistryError
from requester.routing import Handler

log = logging.getLogger("hive.requester.labels")
_EVENT_TEXT = 256  # NodeEvent.old/new are ShortText


class LabelApi:
    """The `label` verb of the node noun (registered on the NodeApi's handlers)."""

    def __init__(
        self,
        registry: Registry,
        *,
        requester_id: str,
        on_event: EventSink,
        limits: codec.Limits,
    ) -> None:
        self._registry = registry
        self._requester_id = requester_id
        self._on_event = on_event
        self._limits = limits

    def handlers(self) -> dict[str, Handler]:
        return {"label": self.label}

    async def label(self, data: bytes) -> Message:
        request = codec.decode(data, NodeLabelRequest, self._limits)
        node_id = self._resolve(request.id)
        seen: list[dict[str, str]] = []  # the labels each compare-and-set try started from

        def edit(record: NodeRecord) -> dict[str, object] | None:
            seen.append(record.operator_labels)
            return _edit(record, request)

        _, record = await self._registry.change(node_id, edit)
        old = seen[-1]
        if record.operator_labels != old:
            event = NodeEvent(
                node_id=node_id,
                event="labels",
                old=_joined(old),
                new=_joined(record.operator_labels),
                reason=request.reason,
            )
            await self._on_event(event)
        return NodeLabelReply(
            id=node_id,
            operator_labels=record.operator_labels,
            labels=dict(self._registry.labels(record)),
            not_set=[key for key in request.remove if key not in old],
        )

    def _resolve(self, prefix: str) -> str:
        if prefix == self._requester_id:
            raise RegistryError("invalid", "the requester itself cannot be changed")
        return self._registry.resolve(prefix)


def _edit(record: NodeRecord, request: NodeLabelRequest) -> dict[str, object] | None:
    """The new operator labels of `record` (None: unchanged); refuses, changing nothing,
    to give an operator label another value without `overwrite`, or to hold too many."""
    current = record.operator_labels
    taken = [k for k, v in request.labels.items() if k in current and current[k] != v]
    if taken and not request.overwrite:
        key = taken[0]
        raise RegistryError(
            "exists",
            f"node {record.node_id} already has operator label {key}={current[key]}: "
            f"use --overwrite to set it to {request.labels[key]!r}",
        )
    labels = {k: v for k, v in current.items() if k not in request.remove}
    labels.update(request.labels)
    if labels == current:
        return None
    if len(labels) > MAX_LABELS:
        raise RegistryError(
            "invalid",
            f"node {record.node_id} would have {len(labels)} operator labels: at most {MAX_LABELS}",
        )
    return {"operator_labels": labels}


def _joined(labels: dict[str, str]) -> ShortText:
    text = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    return text if len(text) <= _EVENT_TEXT else text[: _EVENT_TEXT - 3] + "..."
