"""Where a job may run: filter the nodes, rank them, and say why when none fits.

Pure functions over the registry's view, liveness and the requester's own ledger of
what it has placed, so a scheduling decision can be tested without NATS. The node
remains the truth for its capacity (it admits or rejects an offer from its own ledger);
this only avoids offers that cannot succeed and spreads work across the cluster.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from hivectl.core import labels as node_labels
from hivectl.core.jobs import Job
from hivectl.core.models import Approval, Health, NodeRecord, Resources
from hivectl.core.reliability import NEW_NODE_SCORE, RELIABLE_TIER
from hivectl.core.selectors import parse_selector
from requester.jobs.executions import EVERY_NODE, tally
from requester.jobs.ledger import Ledger, Room
from requester.nodes.liveness import Liveness

APPROVED, HEALTHY = Approval.APPROVED, Health.HEALTHY
NO_SCORES: Mapping[str, float] = {}
NO_TIERS: Mapping[str, int] = {}


@dataclass(slots=True)
class Candidate:
    node_id: str
    free: Room
    allocatable: Resources
    active: int = 0  # executions this requester has on the node now
    limit: int = 0  # the node's max_executions (0: none)
    tier: int = RELIABLE_TIER  # its reliability score in tenths, rounded down

    def has_room(self, want: Room) -> bool:
        """One more execution of `want` fits: resources, and the node's limit."""
        return self.free.fits(want) and not (self.limit and self.active >= self.limit)

    def score(self) -> float:
        """Free CPU and memory, as fractions of what the node offers: emptiest first."""
        cpu = self.free.cpu / self.allocatable.cpu if self.allocatable.cpu else 0.0
        memory = self.free.memory / self.allocatable.memory if self.allocatable.memory else 0.0
        return cpu + memory


# The fewest fitting nodes a batch job's placement ranks (`sample_size`). Nomad ranks 2
# for a batch job; 16 still picks the emptiest of a good few, at 35 us a job on 1,000
# nodes against 119 us for 64 (tests/unit/test_placement.py's cluster, count 1).
SAMPLE = 16


def merged_labels(record: NodeRecord) -> Mapping[str, str]:
    return node_labels.merge(record.info, record.operator_labels)


def candidates(
    job: Job,
    records: list[NodeRecord],
    liveness: Liveness,
    ledger: Ledger,
    labels: Callable[[NodeRecord], Mapping[str, str]] = merged_labels,
    scores: Mapping[str, float] = NO_SCORES,
    tiers: Mapping[str, int] = NO_TIERS,
    *,
    sample: int = 0,
    start: int = 0,
    skip: Container[str] = (),
) -> tuple[list[Candidate], str]:
    """Nodes the job fits on now; when there are none, a sentence saying why.

    Constraints match `labels(record)`: the merged labels (Hive's, the node's own, the
    operator's), which the registry keeps built (`Registry.labels`). `scores` are the
    nodes' reliability (a node without one scores NEW_NODE_SCORE): a job's
    `min_reliability` keeps it off the nodes below. `tiers` are the reliability tiers
    of the nodes ranked below a new node's (few, in a healthy cluster): ranking puts
    them after the others.

    With `sample`, the first `sample` fitting nodes found from `start` round the list
    (skipping `skip` and the nodes ranked below a new node's), when there are that many:
    a batch job ranks a sample, not every node (see `sample_size`). Otherwise every node,
    as without it."""
    if sample and len(records) > sample:
        view = _View(liveness, ledger, labels, scores, tiers)
        found = _sampled(job, records, view, sample, start, skip)
        if found is not None:
            return found, ""
    spec = job.spec
    approved = [r for r in records if r.approval is Approval.APPROVED]
    # A cordoned node (drained, or taken out of service) gets no new executions.
    schedulable = [r for r in approved if not r.cordoned]
    healthy = [r for r in schedulable if liveness.health(r.node_id) is Health.HEALTHY]
    able = [r for r in healthy if spec.engine.value in r.info.executors]
    selector = parse_selector(spec.selector)
    matching = [r for r in able if selector.matches(labels(r))] if selector else able

    def score(node_id: str) -> float:
        return scores.get(node_id, NEW_NODE_SCORE)

    floor = spec.min_reliability
    reliable = [r for r in matching if score(r.node_id) >= floor] if floor > 0 else matching
    active, report = ledger.active, liveness.resources
    # A node at its max_executions (as this requester counts what runs there) gets no
    # offer until one ends: it would only decline it.
    not_full = [r for r in reliable if not _at_limit(r, active[r.node_id])]
    want = Room.of(spec.resources)
    free = [(r, ledger.free(r.node_id, r.info.allocatable, report(r.node_id))) for r in not_full]
    fitting = [
        Candidate(r.node_id, f, r.info.allocatable, active[r.node_id], r.info.max_executions)
        for r, f in free
        if f.fits(want)
    ]
    if tiers:  # one lookup per node only while some node has lost or failed work
        for c in fitting:
            c.tier = tiers.get(c.node_id, RELIABLE_TIER)
    if fitting:
        return fitting, ""
    stages = Stages(records, approved, schedulable, healthy, able, matching, reliable, not_full)
    return [], stages.why_none(job, liveness, [f for _, f in free], score)


def sample_size(need: int, nodes: frozenset[str] | None) -> int:
    """How many fitting nodes a placement looks for before it ranks them (0: all).

    Filtering and ranking every node for every job cost 1.7 ms a job on 1,000 nodes,
    three quarters of a leader's CPU for jobs of count 1. Like Nomad's limit on the nodes
    it scores, a batch job ranks a sample: twice what it misses, at least SAMPLE, found
    from a start that moves on with every job, so jobs spread over the whole cluster.
    Ops jobs and jobs bound to named nodes look at every node."""
    if need == EVERY_NODE or nodes is not None:
        return 0
    return max(SAMPLE, 2 * need)


@dataclass(slots=True)
class _View:
    liveness: Liveness
    ledger: Ledger
    labels: Callable[[NodeRecord], Mapping[str, str]]
    scores: Mapping[str, float]
    tiers: Mapping[str, int]


def _sampled(
    job: Job, records: list[NodeRecord], view: _View, sample: int, start: int, skip: Container[str]
) -> list[Candidate] | None:
    """`sample` nodes the job fits on, looking from `start`; None when fewer fit (then
    every node is ranked, and a job that fits none is told why). Nodes ranked below a
    new node's are left out: the sample is of the nodes ranking would prefer."""
    spec = job.spec
    engine, floor, want = spec.engine.value, spec.min_reliability, Room.of(spec.resources)
    selector = parse_selector(spec.selector)
    active, count = view.ledger.active, len(records)
    found: list[Candidate] = []
    for i in range(count):
        r = records[(start + i) % count]
        node_id = r.node_id
        if (
            r.approval is not Approval.APPROVED
            or r.cordoned
            or node_id in skip
            or node_id in view.tiers
            or engine not in r.info.executors
            or view.liveness.health(node_id) is not Health.HEALTHY
            or (selector and not selector.matches(view.labels(r)))
            or (floor > 0 and view.scores.get(node_id, NEW_NODE_SCORE) < floor)
            or _at_limit(r, active[node_id])
        ):
            continue
        free = view.ledger.free(node_id, r.info.allocatable, view.liveness.resources(node_id))
        if free.fits(want):
            allocatable, limit = r.info.allocatable, r.info.max_executions
            found.append(Candidate(node_id, free, allocatable, active[node_id], limit))
            if len(found) == sample:
                return found
    return None


def _at_limit(record: NodeRecord, active: int) -> bool:
    limit = record.info.max_executions
    return bool(limit) and active >= limit


@dataclass(slots=True)
class Stages:
    """The nodes left after each filter, to say what kept a job from all of them."""

    records: list[NodeRecord]
    approved: list[NodeRecord]
    schedulable: list[NodeRecord]  # not cordoned
    healthy: list[NodeRecord]
    able: list[NodeRecord]
    matching: list[NodeRecord]
    reliable: list[NodeRecord]  # scoring at least the job's min_reliability
    not_full: list[NodeRecord]  # not at their max_executions

    def why_none(
        self, job: Job, liveness: Liveness, free: list[Room], score: Callable[[str], float]
    ) -> str:
        """Why no node fits, from the filter that removed the last nodes, with the
        nodes earlier filters removed counted by cause (`; also 1 PENDING, ...`)."""
        spec, engine = job.spec, job.spec.engine.value
        if not self.records:
            return "no compute node has joined the cluster"
        earlier = Counter(r.approval.value for r in self.records if r.approval is not APPROVED)
        if not self.approved:
            return (
                f"no node is APPROVED: {_counted(earlier)} (approve one: hivectl node approve ID)"
            )
        cordoned = len(self.approved) - len(self.schedulable)
        if not self.schedulable:
            what = "the only APPROVED node is"
            if cordoned > 1:
                what = f"all {cordoned} APPROVED nodes are"
            return _also(f"{what} cordoned (hivectl node uncordon ID puts one back)", earlier)
        earlier["cordoned"] = cordoned
        health = Counter(
            h.value for r in self.schedulable if (h := liveness.health(r.node_id)) is not HEALTHY
        )
        if not self.healthy:
            other = "other " if cordoned else ""
            return _also(f"no {other}APPROVED node is HEALTHY: {_counted(health)}", earlier)
        earlier.update(health)
        which = "eligible " if +earlier else ""
        if not self.able:
            return _also(f"no {which}node has the {engine} executor enabled", earlier)
        earlier[f"without the {engine} executor"] = len(self.healthy) - len(self.able)
        which = "eligible " if +earlier else ""
        if not self.matching:
            return _also(f"no {which}node matches {spec.selector}", earlier)
        earlier[f"not matching {spec.selector}"] = len(self.able) - len(self.matching)
        which = "eligible " if +earlier else ""
        floor = spec.min_reliability
        if not self.reliable:
            best = max(score(r.node_id) for r in self.matching)
            return _also(
                f"no {which}node has reliability {floor:g} or more (best: {best:.2f}; "
                "see hivectl node describe)",
                earlier,
            )
        earlier[f"below reliability {floor:g}"] = len(self.matching) - len(self.reliable)
        which = "eligible " if +earlier else ""
        if not self.not_full:
            full = len(self.reliable)
            if full == 1:
                return _also(f"the only {which}node is at its max_executions", earlier)
            return _also(f"{full} {which}nodes, all at their max_executions", earlier)
        earlier["at their max_executions"] = len(self.reliable) - len(self.not_full)
        which = "eligible " if +earlier else ""
        return _also(shortfall(Room.of(spec.resources), free, which), earlier)


def _counted(counts: Counter[str]) -> str:
    """`2 PENDING, 1 REJECTED`: every cause with a count, in the order first seen."""
    return ", ".join(f"{n} {cause}" for cause, n in counts.items() if n)


def _also(headline: str, earlier: Counter[str]) -> str:
    others = _counted(earlier)
    return f"{headline}; also {others}" if others else headline


_UNITS = (("cpu", "CPU"), ("memory", "memory"), ("disk", "disk"), ("gpu", "GPU"))


def shortfall(want: Room, free: list[Room], which: str = "") -> str:
    """`2 nodes, none with 8 CPUs free (most free: 4 CPUs)`: the first resource no
    node has enough of, with the most any node has."""
    for name, unit in _UNITS:
        needed = getattr(want, name)
        largest = max(getattr(f, name) for f in free)
        if needed > largest + (1e-9 if name == "cpu" else 0):
            asked, most = amount(needed, unit), amount(largest, unit)
            if len(free) == 1:
                return f"the only {which}node has {most} free, not {asked}"
            return f"{len(free)} {which}nodes, none with {asked} free (most free: {most})"
    return f"{len(free)} {which}nodes, none with all the requested resources free at once"


def declined(answers: list[str]) -> str:
    """Why a job found no node though some fitted: what the nodes that declined said."""
    if not answers:
        return "no node fits"
    shown = "; ".join(answers[:5]) + ("; ..." if len(answers) > 5 else "")
    return f"every fitting node declined ({shown})"


def _size(value: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{int(value)}B"


def amount(value: float, unit: str) -> str:
    if unit in ("memory", "disk"):
        return f"{_size(value)} {unit}"
    return f"{value:g} {unit}" + ("" if value == 1 else "s")


def reservable(
    job: Job,
    records: list[NodeRecord],
    liveness: Liveness,
    ledger: Ledger,
    labels: Callable[[NodeRecord], Mapping[str, str]] = merged_labels,
    *,
    keep: str | None = None,
) -> str | None:
    """The node to hold for a job that found no room: one it would fit on if emptied
    (eligible as `candidates` filters, its allocatable big enough): `keep` (the node held
    for it already) while it stays eligible, else the one with the most free room now,
    so it drains soonest; None when there is none."""
    spec = job.spec
    want = Room.of(spec.resources)
    selector = parse_selector(spec.selector)
    best: tuple[float, str] | None = None
    for r in records:
        if r.approval is not APPROVED or r.cordoned or not Room.of(r.info.allocatable).fits(want):
            continue
        if liveness.health(r.node_id) is not HEALTHY or spec.engine.value not in r.info.executors:
            continue
        if selector and not selector.matches(labels(r)):
            continue
        if r.node_id == keep:
            return keep
        free = ledger.free(r.node_id, r.info.allocatable, liveness.resources(r.node_id))
        key = (-Candidate(r.node_id, free, r.info.allocatable).score(), r.node_id)
        best = key if best is None or key < best else best
    return None if best is None else best[1]


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
    counted = tally(job)
    used, avoid = Counter(counted.live), counted.avoid
    # A heap of (executions of this job already there, failed there before, -reliability
    # tier, -score, executions there in all, id): each pick pops the best node and pushes
    # it back with its new key while the job still fits, so a pick costs log(n) instead
    # of re-scoring every node. The count of all executions breaks ties of score, so
    # jobs that ask for nothing (every score equal) spread over the cluster instead of
    # piling onto the nodes whose ids sort first.
    heap = [_key(c, used, avoid) for c in fitting]
    heapq.heapify(heap)
    chosen: list[str] = []
    while heap and len(chosen) < need:
        *_, candidate = heapq.heappop(heap)
        chosen.append(candidate.node_id)
        used[candidate.node_id] += 1
        candidate.active += 1
        candidate.free = candidate.free.minus(want)
        if candidate.has_room(want):
            heapq.heappush(heap, _key(candidate, used, avoid))
    return chosen


def _key(
    c: Candidate, used: Counter[str], avoid: set[str]
) -> tuple[int, bool, int, float, int, str, Candidate]:
    return (used[c.node_id], c.node_id in avoid, -c.tier, -c.score(), c.active, c.node_id, c)
