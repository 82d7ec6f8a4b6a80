"""Node health from the requester's own receive clock.

HEALTHY while the last heartbeat is younger than `unhealthy_after`, UNHEALTHY until
`disconnected_after`, then UNKNOWN. Nothing here is persisted: after a restart every
node is UNKNOWN until it is heard from, so a restart can never make a node look
UNHEALTHY. The heartbeat path is one dict store and one dict lookup.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from hivectl.core.models import Health, NodeEvent, NodeResources

log = logging.getLogger("hive.requester.liveness")

EventSink = Callable[[NodeEvent], Awaitable[None]]
_HEALTHY = Health.HEALTHY


class Liveness:
    def __init__(
        self, unhealthy_after: float, disconnected_after: float, on_event: EventSink
    ) -> None:
        if disconnected_after < unhealthy_after:
            raise ValueError("disconnected_after must not be shorter than unhealthy_after")
        self.unhealthy_after = unhealthy_after
        self.disconnected_after = disconnected_after
        self._on_event = on_event
        self._last: dict[str, float] = {}  # monotonic time of the last heartbeat
        self._health: dict[str, Health] = {}  # absent means UNKNOWN
        self._resources: dict[str, NodeResources] = {}
        # Monotonic time each node heard from went UNKNOWN (pruning counts from there).
        self._unknown_since: dict[str, float] = {}
        self._pending: list[NodeEvent] = []  # changes seen on the hot path, published later
        self.transitions: Counter[tuple[str, str]] = Counter()

    # -- hot path ---------------------------------------------------------------------
    def heard(self, node_id: str, now: float) -> None:
        """A heartbeat from `node_id` arrived at monotonic time `now`."""
        self._last[node_id] = now
        if self._health.get(node_id) is not _HEALTHY:
            self._move(node_id, _HEALTHY, "heartbeat received")

    def record_resources(self, node_id: str, resources: NodeResources) -> None:
        self._resources[node_id] = resources

    # -- other inputs ---------------------------------------------------------------
    def left(self, node_id: str, reason: str) -> None:
        """The node said it is shutting down: UNKNOWN at once, no waiting."""
        self._last.pop(node_id, None)
        if node_id in self._health:
            self._move(node_id, Health.UNKNOWN, f"node left: {reason}" if reason else "node left")

    def forget(self, node_id: str) -> None:
        """The node's record is gone: drop everything, quietly."""
        self._last.pop(node_id, None)
        self._health.pop(node_id, None)
        self._resources.pop(node_id, None)
        self._unknown_since.pop(node_id, None)

    def sweep(self, now: float) -> None:
        """Age every heard-from node; called by the requester's periodic health check."""
        unhealthy, gone = self.unhealthy_after, self.disconnected_after
        changes: list[tuple[str, Health, float]] = []
        for node_id, last in self._last.items():
            age = now - last
            state = self._health.get(node_id)
            if age >= gone:
                changes.append((node_id, Health.UNKNOWN, age))
            elif age >= unhealthy and state is _HEALTHY:
                changes.append((node_id, Health.UNHEALTHY, age))
        for node_id, state, age in changes:
            if state is Health.UNKNOWN:
                del self._last[node_id]
            self._move(node_id, state, f"no heartbeat for {age:.1f}s")

    async def publish(self) -> None:
        """Send the events gathered since the last call."""
        pending, self._pending = self._pending, []
        for event in pending:
            await self._on_event(event)

    # -- reads ----------------------------------------------------------------------
    def health(self, node_id: str) -> Health:
        return self._health.get(node_id, Health.UNKNOWN)

    def resources(self, node_id: str) -> NodeResources | None:
        return self._resources.get(node_id)

    def unknown_since(self, node_id: str) -> float | None:
        """Monotonic time an UNKNOWN node went UNKNOWN; None if it is not UNKNOWN or was
        not heard from since the requester started."""
        return self._unknown_since.get(node_id)

    def last_heard(self, node_id: str) -> float | None:
        """Wall-clock time of the last heartbeat, for display only."""
        last = self._last.get(node_id)
        return None if last is None else time.time() - (time.monotonic() - last)

    def count(self, health: Health) -> int:
        if health is Health.UNKNOWN:
            raise ValueError("UNKNOWN is every node not heard from; count the registry")
        return list(self._health.values()).count(health)  # one C-level copy: thread-safe

    def _move(self, node_id: str, new: Health, reason: str) -> None:
        old = self._health.get(node_id, Health.UNKNOWN)
        if old is new:
            return
        if new is Health.UNKNOWN:
            self._health.pop(node_id, None)
            self._unknown_since[node_id] = time.monotonic()
        else:
            self._health[node_id] = new
            self._unknown_since.pop(node_id, None)
        self.transitions[(old, new)] += 1
        self._pending.append(
            NodeEvent(node_id=node_id, event="health", old=old, new=new, reason=reason)
        )
