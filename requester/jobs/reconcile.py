"""Comparing what a node says it holds with what the requester has running there.

Each info update of an agent lists the executions it holds (running, or ended with the
report still to go out). Against the job records that makes two kinds of difference:

- the node holds one the requester has in an ended state (written off as lost and placed
  elsewhere, cancelled): the node is told to stop it (`stale`);
- the requester has one active there that the node does not hold (the node crashed or
  lost its state files): the execution ends CANCELLED as stopped by its node, so the
  work is placed again without using a retry.

Either is acted on only when two reports at least GRACE apart both show it; an
execution just offered may not have reached the node yet. And each is checked against
what could still be on its way:

- "gone" waits until the HIVE_EXEC consumer has caught up past the first report that
  lacked the execution: a node publishes an execution's final update before it lets go
  of it, so a node that finished it has its update applied by then. (On a NATS cluster
  whose exec stream is electing a leader, or while no requester leads, that can take
  longer than GRACE; the work must not run twice meanwhile.)
- "stale" is read afresh from the bucket, and only an execution the record shows ended
  is stale: memory may lag the bucket, and an execution it does not know at all is left
  alone rather than killed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hivectl.core.jobs import EXEC_TERMINAL
from requester.jobs.records import JobStore

log = logging.getLogger("hive.requester.reconcile")
GRACE = 10.0

Gone = Callable[[str, dict[str, str]], None]  # (node id, {exec id: job id})
Seen = dict[str, dict[str, float]]  # node -> exec -> when a report first showed it


class Reconciler:
    def __init__(
        self,
        store: JobStore,
        on_gone: Gone,
        caught_up: Callable[[], float],
        *,
        grace: float = GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._on_gone = on_gone
        self._caught_up = caught_up  # monotonic time the update consumer caught up to
        self._grace = grace
        self._clock = clock
        self._missed: Seen = {}
        self._extra: Seen = {}
        self.stale_told = 0
        self.written_off = 0

    async def check(self, node_id: str, held: list[str]) -> list[str]:
        """The executions `node_id` should stop; acts on those it lost for good."""
        active = self._store.active_on(node_id)
        holding = set(held)
        caught_up = self._caught_up()
        settled = self._settled(self._missed, node_id, set(active) - holding, caught_up)
        gone = {x: active[x] for x in settled}
        stale = await self._ended([*self._settled(self._extra, node_id, holding - set(active))])
        if gone:
            log.warning(
                "node %s does not hold %d execution(s) it should run (%s): writing them off",
                node_id, len(gone), ", ".join(sorted(gone)), extra={"node_id": node_id},
            )  # fmt: skip
            self.written_off += len(gone)
            self._on_gone(node_id, gone)
        if stale:
            log.info(
                "node %s holds %d execution(s) that ended here; telling it to stop them",
                node_id, len(stale), extra={"node_id": node_id},
            )  # fmt: skip
            self.stale_told += len(stale)
        return stale

    async def _ended(self, exec_ids: list[str]) -> list[str]:
        """Of `exec_ids`, those whose job record, read now, shows them ended."""
        ended = []
        for exec_id in exec_ids:
            job_id = self._store.job_of(exec_id)
            execution = None if job_id is None else await self._store.fresh_exec(job_id, exec_id)
            if execution is not None and execution.state in EXEC_TERMINAL:
                ended.append(exec_id)
        return sorted(ended)

    def _settled(
        self, seen: Seen, node_id: str, now_differ: set[str], caught_up: float | None = None
    ) -> list[str]:
        """Of the differences this report shows, those shown GRACE ago already (and, with
        `caught_up`, shown before the update consumer last caught up)."""
        now, before = self._clock(), seen.get(node_id, {})
        since = {x: before.get(x, now) for x in now_differ}
        settled = [
            x
            for x, first in since.items()
            if now - first >= self._grace and (caught_up is None or caught_up > first)
        ]
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
