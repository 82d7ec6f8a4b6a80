"""What this requester has promised each node, as the scheduler counts it.

The scheduler charges every placement here before its offers go out and takes the
charge back when a node declines or does not answer. Amounts are `Room`s, plain
numbers rather than pydantic models: every decision works out the free room of every
node in the cluster, and at a thousand nodes the cost of building models showed up as
most of the scheduler's time in profiles.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from hivectl.core.jobs import JOB_TERMINAL, Job
from hivectl.core.models import NodeResources, Resources
from requester.jobs.executions import ACTIVE


class Amounts(Protocol):
    """Resources, a ResourceRequest: anything with the four amounts."""

    @property
    def cpu(self) -> float: ...
    @property
    def memory(self) -> int: ...
    @property
    def disk(self) -> int: ...
    @property
    def gpu(self) -> int: ...


class Room(NamedTuple):
    """CPU cores, memory and disk bytes, GPUs; never negative when built by `minus`."""

    cpu: float = 0.0
    memory: int = 0
    disk: int = 0
    gpu: int = 0

    @classmethod
    def of(cls, amounts: Amounts) -> Room:
        return cls(amounts.cpu, amounts.memory, amounts.disk, amounts.gpu)

    def fits(self, want: Room) -> bool:
        """True when `want` fits inside this room (CPU with a float's slack)."""
        return (
            want.cpu <= self.cpu + 1e-9
            and want.memory <= self.memory
            and want.disk <= self.disk
            and want.gpu <= self.gpu
        )

    def plus(self, other: Room, times: int = 1) -> Room:
        return Room(
            round(self.cpu + other.cpu * times, 6),
            self.memory + other.memory * times,
            self.disk + other.disk * times,
            self.gpu + other.gpu * times,
        )

    def minus(self, other: Room) -> Room:
        """What is left, clamped at zero."""
        return Room(
            max(0.0, round(self.cpu - other.cpu, 6)),
            max(0, self.memory - other.memory),
            max(0, self.disk - other.disk),
            max(0, self.gpu - other.gpu),
        )

    def capped(self, other: Amounts) -> Room:
        """The smaller of each amount."""
        return Room(
            min(self.cpu, other.cpu),
            min(self.memory, other.memory),
            min(self.disk, other.disk),
            min(self.gpu, other.gpu),
        )


NOTHING = Room()


@dataclass(slots=True)
class Ledger:
    """Per node: the room held by this requester's executions, and how many there are.

    Built from the job records when a scheduling pass starts, then kept by the pass: a
    placement holds room in the same step that plans it (no await in between) and
    releases what a node declined or never answered, so placements in flight at the
    same time never count the same free capacity twice.
    """

    reserved: dict[str, Room] = field(default_factory=dict)
    active: Counter[str] = field(default_factory=Counter)
    # exec id -> (node, room) of the executions whose room this ledger holds, so an
    # execution that ends gives its room back once, and only if it was counted here.
    holding: dict[str, tuple[str, Room]] = field(default_factory=dict)
    # Per node: the free room last worked out, and the allocatable and report it came
    # from. Records and reports are replaced, never changed in place, so the same two
    # objects and no hold or release since mean the same answer; most nodes are untouched
    # between two decisions.
    _free: dict[str, tuple[Resources, NodeResources | None, Room]] = field(default_factory=dict)

    @classmethod
    def of(cls, jobs: Iterable[Job]) -> Ledger:
        """Every active execution of every unfinished job, per node."""
        ledger = cls()
        for job in jobs:
            if job.state in JOB_TERMINAL:  # finishing a job cancels its active executions
                continue
            per_node = Counter(e.node_id for e in job.executions if e.state in ACTIVE)
            want = Room.of(job.spec.resources)
            for node_id, count in per_node.items():
                ledger.hold(node_id, want, count)
        return ledger

    def hold(self, node_id: str, want: Room, count: int = 1) -> None:
        self.reserved[node_id] = self.reserved.get(node_id, NOTHING).plus(want, count)
        self.active[node_id] += count
        self._free.pop(node_id, None)

    def hold_exec(self, exec_id: str, node_id: str, want: Room) -> None:
        """Hold `want` on `node_id` for `exec_id` (see `release_exec`)."""
        self.hold(node_id, want)
        self.holding[exec_id] = (node_id, want)

    def release_exec(self, exec_id: str) -> bool:
        """Give back the room `exec_id` held; False when this ledger held none for it."""
        held = self.holding.pop(exec_id, None)
        if held is None:
            return False
        self.release(*held)
        return True

    def release(self, node_id: str, want: Room) -> None:
        held = self.reserved.get(node_id)
        if held is not None:
            self.reserved[node_id] = held.minus(want)
        if self.active[node_id] > 0:
            self.active[node_id] -= 1
        self._free.pop(node_id, None)

    def free(self, node_id: str, allocatable: Resources, report: NodeResources | None) -> Room:
        """What a node can still take.

        Allocatable minus what we hold there, capped by the node's own latest report: a
        report that already counts our executions is not subtracted twice, and one from
        before they were placed cannot hide them.
        """
        known = self._free.get(node_id)
        if known is not None and known[0] is allocatable and known[1] is report:
            return known[2]
        room = Room.of(allocatable)
        held = self.reserved.get(node_id)
        if held is not None:
            room = room.minus(held)
        if report is not None:
            room = room.capped(report.available)
        self._free[node_id] = (allocatable, report, room)
        return room


class Stored(Protocol):
    """What a ledger is built from: the job store's index of active executions."""

    def active_nodes(self) -> list[str]: ...
    def active_on(self, node_id: str) -> dict[str, str]: ...
    def record(self, job_id: str) -> Job | None: ...


def held_in(store: Stored) -> Ledger:
    """What the active executions of unfinished jobs hold, per node: from the store's
    index of them, so it costs what runs now, not every job ever kept."""
    ledger = Ledger()
    for node_id in store.active_nodes():
        for exec_id, job_id in store.active_on(node_id).items():
            record = store.record(job_id)
            if record is not None and record.state not in JOB_TERMINAL:
                ledger.hold_exec(exec_id, node_id, Room.of(record.spec.resources))
    return ledger
