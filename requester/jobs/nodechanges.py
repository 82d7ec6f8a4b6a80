"""What the scheduler does when nodes come and go: a lost node's executions are LOST
(their jobs placed again), executions a node no longer holds are written off, and a
lost node that is back is told to stop what was placed elsewhere meanwhile.

Changes are queued as they are heard and handled between placements, one at a time,
by the scheduler's worker (`handle`), so they never race a decision.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from hivectl.core.jobs import ExecState, Job
from requester.jobs.executions import mark_gone, mark_lost, missing
from requester.jobs.fenced import FencedJobs
from requester.nodes.link import NodeLink

log = logging.getLogger("hive.requester.scheduler")
Want = Callable[[str, Job | None], None]  # (job id, its record if at hand): place it


class NodeChanges:
    def __init__(self, store: FencedJobs, link: NodeLink, *, want: Want) -> None:
        self._store = store
        self._link = link
        self._want = want
        self._changes: list[tuple[str, bool]] = []  # (node, lost?)
        self._gone: list[tuple[str, dict[str, str]]] = []  # (node, {exec: job}) it lacks
        self._cancelled_lost: set[str] = set()

    def changed(self, node_id: str, *, lost: bool) -> None:
        self._changes.append((node_id, lost))

    def gone(self, node_id: str, gone: dict[str, str]) -> None:
        """`node_id` does not hold these executions ({exec id: job id}) any more."""
        self._gone.append((node_id, gone))

    async def handle(self) -> None:
        while self._gone:
            node_id, gone = self._gone.pop(0)
            await self._drop_gone(node_id, gone)
        while self._changes:
            node_id, lost = self._changes.pop(0)
            try:
                await (self._lose(node_id) if lost else self._welcome(node_id))
            except Exception:  # raised into the pass, it would cancel the placements in flight
                log.exception("handling node %s (%s) failed", node_id, "lost" if lost else "back")

    async def _lose(self, node_id: str) -> None:
        for job_id in sorted(set(self._store.active_on(node_id).values())):
            log.warning("node %s lost: job %s loses its executions there", node_id, job_id)
            after = await self._store.change(job_id, lambda j: mark_lost(j, node_id))
            if after is not None and missing(after)[0]:
                self._want(job_id, after)

    async def _drop_gone(self, node_id: str, gone: dict[str, str]) -> None:
        by_job: dict[str, set[str]] = {}
        for exec_id, job_id in gone.items():
            by_job.setdefault(job_id, set()).add(exec_id)
        reason = f"node {node_id} does not hold it (the node restarted or lost its state)"
        for job_id, exec_ids in by_job.items():
            try:
                change = functools.partial(mark_gone, exec_ids=frozenset(exec_ids), reason=reason)
                after = await self._store.change(job_id, change)
            except Exception:  # one job's trouble must not keep the others from moving
                log.exception("writing off executions of %s failed", job_id)
                continue
            if after is not None and missing(after)[0]:
                self._want(job_id, after)

    async def _welcome(self, node_id: str) -> None:
        """A lost node is back: it must stop what was re-placed elsewhere."""
        stale = [
            e
            for job in self._store.jobs()
            for e in job.executions
            if e.node_id == node_id
            and e.state is ExecState.LOST
            and e.exec_id not in self._cancelled_lost
        ]
        self._cancelled_lost.update(e.exec_id for e in stale)
        if stale:
            self._link.cancel(stale, f"node {node_id} was lost; the execution was written off")
