"""Pages of `hive.api.node.list`, assembled from msgpack pieces cached per node.

A node's view is its stored record joined with what liveness knows now. The record
part changes only when the record does (approval, new info: a new object each time),
and a resource report only every 30 s, so their msgpack bytes are kept and reused;
health and the last heartbeat are packed fresh for every page. A msgpack map is its
header followed by its key/value pairs, and an array its header followed by its
items, so a page is the concatenation of those pieces: byte for byte a valid
`NodeListReply`, at a fraction of what `model_dump` of ten thousand views costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack

from hivectl.core import codec
from hivectl.core.api import NodeListReply, NodeView
from hivectl.core.models import PROTOCOL_VERSION, Health, NodeRecord, NodeResources, NodeType
from hivectl.core.reliability import Reliability

# A view's live fields, packed per page; the others come from the stored record.
_LIVE_FIELDS = 4  # health, resources, last_heartbeat, reliability
_NIL = codec.pack(None)
# One packer, not one per value (msgpack.packb makes one each call). The event loop
# is the only thread that lists nodes, so sharing it is safe.
_PACKER = msgpack.Packer(use_bin_type=True)


def _pack(value: Any) -> bytes:
    return _PACKER.pack(value)  # type: ignore[no-any-return]


def _pair(key: str, value: Any) -> bytes:
    return codec.pack(key) + codec.pack(value)


def _pairs(data: dict[str, Any]) -> bytes:
    """The key/value pairs of a map, without its header."""
    if len(data) <= 15:
        # A map of up to 15 entries is a one-byte header (fixmap), then its pairs:
        # packing the map whole is three times faster than packing pair by pair.
        return _pack(data)[1:]
    return b"".join(_pair(key, value) for key, value in data.items())


_KEY_HEALTH = codec.pack("health")
_KEY_RESOURCES = codec.pack("resources")
_KEY_HEARD = codec.pack("last_heartbeat")
_KEY_RELIABILITY = codec.pack("reliability")
_HEALTH = {health: codec.pack(health.value) for health in Health}


class NodePages:
    """msgpack of node views and of whole list pages, reusing what has not changed."""

    def __init__(self, labels: Callable[[NodeRecord], Mapping[str, str]]) -> None:
        self._labels = labels  # a record's merged labels
        # node id -> (the object the bytes were made from, the bytes); a record's bytes
        # start with the header of the whole view's map
        self._records: dict[str, tuple[NodeRecord, bytes]] = {}
        self._resources: dict[str, tuple[NodeResources, bytes]] = {}

    def view(
        self,
        record: NodeRecord,
        health: Health,
        resources: NodeResources | None,
        last_heard: float | None,
        reliability: bytes | None = None,
    ) -> bytes:
        """One node's view as a msgpack map: decoded, the same NodeView that `view()`
        makes; `reliability` packed (see `packed_reliability`)."""
        heard = _NIL if last_heard is None else _pack(_iso(last_heard))
        return b"".join(
            (
                self._record_part(record),
                _KEY_HEALTH,
                _HEALTH[health],
                _KEY_RESOURCES,
                self._resources_part(record.node_id, resources),
                _KEY_HEARD,
                heard,
                _KEY_RELIABILITY,
                _NIL if reliability is None else reliability,
            )
        )

    def forget_missing(self, known: Iterable[str]) -> None:
        """Drop the cached bytes of nodes that are gone (deleted, or never listed again)."""
        keep = set(known)
        for cache in (self._records, self._resources):
            for node_id in [node_id for node_id in cache if node_id not in keep]:
                del cache[node_id]

    def __len__(self) -> int:
        return len(self._records)

    def _record_part(self, record: NodeRecord) -> bytes:
        cached = self._records.get(record.node_id)
        if cached is not None and cached[0] is record:
            return cached[1]
        data = record.model_dump(mode="json")
        data["type"] = NodeType.COMPUTE.value
        data["labels"] = dict(self._labels(record))
        # The view's map header (the record's fields and the live ones), then the pairs.
        part = _map_header(len(data) + _LIVE_FIELDS) + _pairs(data)
        self._records[record.node_id] = (record, part)
        return part

    def _resources_part(self, node_id: str, resources: NodeResources | None) -> bytes:
        if resources is None:
            return _NIL
        cached = self._resources.get(node_id)
        if cached is not None and cached[0] is resources:
            return cached[1]
        part = codec.pack_model(resources)
        self._resources[node_id] = (resources, part)
        return part


class ReliabilityParts:
    """Packed Reliability views, made once per node and score: most nodes share the
    new node's (no record), and a score changes only when work ends on its node."""

    def __init__(
        self, reliability: Callable[[str], Reliability], scores: Mapping[str, float]
    ) -> None:
        self._reliability = reliability
        self._scores = scores  # the usage book's, kept current as work ends
        self._packed: dict[str, tuple[float, bytes]] = {}
        self._new = codec.pack_model(Reliability())

    def part(self, node_id: str) -> bytes:
        score = self._scores.get(node_id)
        if score is None:
            return self._new
        cached = self._packed.get(node_id)
        if cached is not None and cached[0] == score:
            return cached[1]
        packed = codec.pack_model(self._reliability(node_id))
        self._packed[node_id] = (score, packed)
        return packed


def page(views: list[bytes], next_id: str) -> bytes:
    """A whole `NodeListReply` from views packed by `NodePages.view` (or `whole_view`)."""
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join(
        (
            packer.pack_map_header(4),
            _pair("v", PROTOCOL_VERSION),
            _pair("kind", NodeListReply.kind),
            _pair("next", next_id),
            codec.pack("nodes"),
            packer.pack_array_header(len(views)),
            *views,
        )
    )


PAGE_OVERHEAD = len(page([], "x" * 256))  # a page's bytes besides its views, at most


def whole_view(view: NodeView) -> bytes:
    """A view that is not backed by a record (the requester's own), packed whole."""
    return codec.pack_model(view)


def _map_header(size: int) -> bytes:
    return _PACKER.pack_map_header(size)  # type: ignore[no-any-return]


_seconds: dict[int, str] = {}  # whole second -> its ISO form, for the last heartbeats


def _iso(timestamp: float) -> str:
    """ISO 8601 in UTC with microseconds, as pydantic writes a datetime.

    Heartbeats of every node fall within the last interval or two, a few dozen
    distinct seconds, so the date part is formatted once per second, not per node:
    `datetime.isoformat` was 40% of the time of a list page.
    """
    second = int(timestamp)
    micro = round((timestamp - second) * 1_000_000)
    if micro == 1_000_000:
        second, micro = second + 1, 0
    prefix = _seconds.get(second)
    if prefix is None:
        if len(_seconds) > 4096:
            _seconds.clear()
        prefix = _seconds[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{prefix}.{micro:06d}Z"
