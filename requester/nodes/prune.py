"""Pruning dead nodes: deleting the records of nodes UNKNOWN for longer than a threshold.

How long a node has been UNKNOWN is what this requester has seen itself: from the moment
it saw the node go UNKNOWN, or, for a node it has not heard from at all, from
`disconnected_after` past its own start (when, had it heard the node at its start, it
would have seen it go). Health lives in memory (heartbeats are not persisted), so after
a restart every node is UNKNOWN until heard from; counting this way, the time the
requester was down, or had just started, never counts, and a node is pruned only after
this requester has itself gone the whole threshold, plus `disconnected_after`, without a
heartbeat from it. (A record's stored times cannot say that: nothing is written while no
requester runs.) The price: a requester restarted more often than that prunes nothing
automatically; `hivectl node prune` with a shorter threshold still does.

The leader prunes on its own when `node_prune_after` is set; any requester answers
`hive.api.node.prune` (a listing, or the removal an operator confirmed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from hivectl.core import codec
from hivectl.core.api import MAX_PRUNE, NODE_PRUNE, NodePruneReply, NodePruneRequest, PruneCandidate
from hivectl.core.models import Health, Message
from requester.nodes.liveness import Liveness
from requester.nodes.registry import Registry
from requester.routing import Handler

log = logging.getLogger("hive.requester.prune")
PRUNE_EVERY = 60.0  # seconds between the leader's looks, at most
PRUNE_BATCH = 100  # records the leader removes in one health check
Remove = Callable[[str, str], Awaitable[None]]  # (node id, reason)


def span(seconds: float) -> str:
    """A duration for people: 45s, 12m, 3h20m, 2d4h."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{seconds:.3g}s" if seconds < 10 else f"{secs}s"


class Pruner:
    """`after`: the leader's automatic threshold (config `node_prune_after`); 0: off.
    `remove(node_id, reason)` deletes a record as an operator's delete does."""

    def __init__(
        self,
        registry: Registry,
        liveness: Liveness,
        remove: Remove,
        *,
        started_at: float,
        after: float,
        limits: codec.Limits,
    ) -> None:
        self._registry = registry
        self._liveness = liveness
        self._remove = remove
        self._started_at = started_at
        self.after = after
        self._limits = limits
        self._next = 0.0
        self.pruned = 0  # records removed, automatically or on request

    def handlers(self) -> dict[str, Handler]:
        return {NODE_PRUNE: self.prune_request}

    def unknown_for(self, node_id: str, now: float) -> float | None:
        """Seconds this requester has seen `node_id` UNKNOWN; None when it is not, or
        not yet as far as it can tell (started less than `disconnected_after` ago)."""
        if self._liveness.health(node_id) is not Health.UNKNOWN:
            return None
        since = self._liveness.unknown_since(node_id)
        if since is None:  # not heard from since we started
            since = self._started_at + self._liveness.disconnected_after
        return now - since if now >= since else None

    def candidates(self, threshold: float, now: float) -> list[PruneCandidate]:
        """The nodes UNKNOWN for at least `threshold` seconds, longest first."""
        found = []
        for node_id in list(self._registry.ids()):  # health first: no record is read
            gone = self.unknown_for(node_id, now)  # for the nodes that are fine
            record = self._registry.get(node_id) if gone is not None else None
            if gone is not None and gone >= threshold and record is not None:
                found.append(
                    PruneCandidate(node_id=node_id, approval=record.approval, unknown_for=gone)
                )
        found.sort(key=lambda c: (-c.unknown_for, c.node_id))
        return found

    async def prune(self, node_ids: list[str], threshold: float, why: str) -> list[str]:
        """Remove those of `node_ids` still UNKNOWN for `threshold`; the ones removed.
        Each is checked again just before: a node heard from meanwhile stays."""
        removed = []
        for node_id in node_ids:
            gone = self.unknown_for(node_id, time.monotonic())
            if gone is None or gone < threshold or self._registry.get(node_id) is None:
                continue
            reason = f"pruned: UNKNOWN for {span(gone)}, over {why}"
            await self._remove(node_id, reason)
            removed.append(node_id)
            self.pruned += 1
        return removed

    # -- the API verb ---------------------------------------------------------------------
    async def prune_request(self, data: bytes) -> Message:
        request = codec.decode(data, NodePruneRequest, self._limits)
        now = time.monotonic()
        found = self.candidates(request.unknown_for, now)
        if request.ids is not None:
            wanted = set(request.ids)
            found = [c for c in found if c.node_id in wanted]
        shown, more = found[:MAX_PRUNE], max(0, len(found) - MAX_PRUNE)
        if not request.dry_run:
            why = f"--unknown-for {span(request.unknown_for)}"
            if request.reason:
                why = f"{why}: {request.reason}"
            removed = set(await self.prune([c.node_id for c in shown], request.unknown_for, why))
            shown = [c for c in shown if c.node_id in removed]
        return NodePruneReply(
            nodes=shown,
            pruned=not request.dry_run,
            more=more,
            watching_for=now - self._started_at,
        )

    # -- the leader's duty ----------------------------------------------------------------
    async def tick(self, now: float) -> None:
        """Prune on the leader's clock: every PRUNE_EVERY, or a tenth of the threshold."""
        if self.after <= 0 or now < self._next:
            return
        self._next = now + min(PRUNE_EVERY, self.after / 10)
        found = self.candidates(self.after, now)
        if not found:
            return
        if len(found) > PRUNE_BATCH:  # the rest on the next health check, not all at once
            found, self._next = found[:PRUNE_BATCH], now
        why = f"node_prune_after {span(self.after)}"
        removed = await self.prune([c.node_id for c in found], self.after, why)
        if removed:
            log.info("pruned %d nodes UNKNOWN for over %s", len(removed), span(self.after))
