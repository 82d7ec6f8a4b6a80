"""Where a job may run: filter the nodes, rank them, and say why when none fits.

Pure functions over the registry's view, liveness and the requester's own ledger of
what it has placed, so a scheduling decision can be tested without NATS. The node
remains the truth for its capacity (it admits or rejects an offer from its own ledger);
this only avoids offers that cannot succeed and spreads work across the cluster.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

from hivectl.core.jobs import ExecState, Job
from hivectl.core.models import Approval, Health, NodeRecord, Resources
from hivectl.core.selectors import parse_selector
from requester.executions import EVERY_NODE, live
from requester.ledger import Ledger, Room
from requester.liveness import Liveness


@dataclass(slots=True)
class Candidate:
    node_id: str
    free: Room
    allocatable: Resources
    active: int = 0  # executions this requester has on the node now

    def score(self) -> float:
        """Free CPU and memory, as fractions of what the node offers: emptiest first."""
        cpu = self.free.cpu / self.allocatable.cpu if self.allocatable.cpu else 0.0
        memory = self.free.memory / self.allocatable.memory if self.allocatable.memory else 0.0
        return cpu + memory


def candidates(
    job: Job, records: list[NodeRecord], liveness: Liveness, ledger: Ledger
) -> tuple[list[Candidate], str]:
    """Nodes the job fits on now; when there are none, a sentence saying why."""
    spec = job.spec
    approved = [r for r in records if r.approval is Approval.APPROVED]
    if not approved:
        return [], f"no node fits: none of the {len(records)} known nodes is APPROVED"
    healthy = [r for r in approved if liveness.health(r.node_id) is Health.HEALTHY]
    if not healthy:
        return [], f"no node fits: {len(approved)} nodes APPROVED, none HEALTHY"
    base = f"{len(healthy)} nodes APPROVED and HEALTHY"
    able = [r for r in healthy if spec.engine.value in r.info.executors]
    if not able:
        return [], f"no node fits: {base}; none has the {spec.engine.value} executor enabled"
    selector = parse_selector(spec.selector)
    matching = [r for r in able if selector.matches(r.info.labels)]
    if not matching:
        return [], f"constraint {spec.selector} matches no node ({base})"
    want = Room.of(spec.resources)
    active, report = ledger.active, liveness.resources
    free = [(r, ledger.free(r.node_id, r.info.allocatable, report(r.node_id))) for r in matching]
    fitting = [
        Candidate(r.node_id, f, r.info.allocatable, active[r.node_id])
        for r, f in free
        if f.fits(want)
    ]
    if not fitting:
        return [], f"no node fits: {base}; {shortfall(want, [f for _, f in free])}"
    return fitting, ""


def shortfall(want: Room, free: list[Room]) -> str:
    """The first resource no node has enough of, with the most any node has."""
    for name, unit in (("cpu", "CPU"), ("memory", "memory"), ("disk", "disk"), ("gpu", "GPU")):
        needed = getattr(want, name)
        largest = max(getattr(f, name) for f in free)
        if needed > largest + (1e-9 if name == "cpu" else 0):
            shown = _size if name in ("memory", "disk") else _count
            return f"none has {shown(needed)} {unit} free (largest: {shown(largest)})"
    return "none has all the requested resources free at once"


def _count(value: float) -> str:
    return f"{value:g}"


def _size(value: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{int(value)}B"


def plan(job: Job, need: int, nodes: frozenset[str] | None, fitting: list[Candidate]) -> list[str]:
    """Nodes to offer the missing executions to, best first.

    Ops jobs: each wanted node once. Batch jobs: distinct nodes where possible, then
    doubling up where capacity allows; nodes where this job failed or was declined last.
    """
    if need == EVERY_NODE:
        return sorted(c.node_id for c in fitting)
    if nodes is not None:
        return sorted(c.node_id for c in fitting if c.node_id in nodes)
    want = Room.of(job.spec.resources)
    used = Counter(e.node_id for e in live(job))
    avoid = {
        e.node_id
        for e in job.executions
        if e.state in (ExecState.FAILED, ExecState.LOST, ExecState.REJECTED)
    }
    # A heap of (executions of this job already there, failed there before, -score,
    # executions there in all, id): each pick pops the best node and pushes it back with
    # its new key while the job still fits, so a pick costs log(n) instead of re-scoring
    # every node. The count of all executions breaks ties of score, so jobs that ask for
    # nothing (every score equal) spread over the cluster instead of piling onto the
    # nodes whose ids sort first.
    heap = [_key(c, used, avoid) for c in fitting]
    heapq.heapify(heap)
    chosen: list[str] = []
    while heap and len(chosen) < need:
        *_, candidate = heapq.heappop(heap)
        chosen.append(candidate.node_id)
        used[candidate.node_id] += 1
        candidate.active += 1
        candidate.free = candidate.free.minus(want)
        if candidate.free.fits(want):
            heapq.heappush(heap, _key(candidate, used, avoid))
    return chosen


def _key(
    c: Candidate, used: Counter[str], avoid: set[str]
) -> tuple[int, bool, float, int, str, Candidate]:
    return (used[c.node_id], c.node_id in avoid, -c.score(), c.active, c.node_id, c)
