"""Comparing what a node says it holds with what the requester has running there.

Each info update of an agent lists the executions it holds (running, or ended with the
report still to go out). Against the job records that makes two kinds of difference:

- the node holds one the requester has no active record of there (written off as lost
  and placed elsewhere, finished, unknown): the node is told to stop it (`stale`);
- the requester has one active there that the node does not hold (the node crashed or
  lost its state files): the execution ends CANCELLED as stopped by its node, so the
  work is placed again without using a retry.

Either is acted on only when two reports at least GRACE apart both show it. An
execution just offered may not have reached the node yet, one that just ended may have
its final update still on its way through HIVE_EXEC, and another requester's write may
not have reached this one's view of the bucket: each settles well within GRACE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from requester.jobs import JobStore

log = logging.getLogger("hive.requester.reconcile")
GRACE = 10.0

Gone = Callable[[str, dict[str, str]], None]  # (node id, {exec id: job id})


class Reconciler:
    def __init__(
        self,
        store: JobStore,
        on_gone: Gone,
        *,
        grace: float = GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._on_gone = on_gone
        self._grace = grace
        self._clock = clock
        # node -> exec -> when a report first showed the difference (missing, or stale)
        self._missed: dict[str, dict[str, float]] = {}
        self._extra: dict[str, dict[str, float]] = {}
        self.stale_told = 0
        self.written_off = 0

    def check(self, node_id: str, held: list[str]) -> list[str]:
        """The executions `node_id` should stop; acts on those it lost for good."""
        active = self._store.active_on(node_id)
        holding = set(held)
        gone = {x: active[x] for x in self._settled(self._missed, node_id, set(active) - holding)}
        stale = sorted(self._settled(self._extra, node_id, holding - set(active)))
        if gone:
            log.warning(
                "node %s does not hold %d execution(s) it should run (%s): writing them off",
                node_id,
                len(gone),
                ", ".join(sorted(gone)),
                extra={"node_id": node_id},
            )
            self.written_off += len(gone)
            self._on_gone(node_id, gone)
        if stale:
            log.info(
                "node %s holds %d execution(s) not active here; telling it to stop them",
                node_id,
                len(stale),
                extra={"node_id": node_id},
            )
            self.stale_told += len(stale)
        return stale

    def _settled(
        self, seen: dict[str, dict[str, float]], node_id: str, now_differ: set[str]
    ) -> list[str]:
        """Of the differences this report shows, those shown GRACE ago already."""
        now, before = self._clock(), seen.get(node_id, {})
        since = {x: before.get(x, now) for x in now_differ}
        settled = [x for x, first in since.items() if now - first >= self._grace]
        for exec_id in settled:
            del since[exec_id]
        if since:
            seen[node_id] = since
        else:
            seen.pop(node_id, None)
        return settled

    def forget(self, node_id: str) -> None:
        self._missed.pop(node_id, None)
        self._extra.pop(node_id, None)
