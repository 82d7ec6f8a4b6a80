"""The requester's aggregates of the usage stream: totals by hour, user and node, and
each node's reliability, kept as records arrive so a report or a placement costs what
the window holds (hours x users x nodes with work), never the records behind it.

Records count in the hour their execution ended (reports resolve `--since` to the
hour, as sreport does). Hours older than the stream keeps records are dropped, and
taken off the running totals and the nodes' records, so a long-running requester
agrees with one that has just rebuilt its book from the stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from hivectl.core.jobs import ExecState
from hivectl.core.reliability import RELIABLE_TIER, tier
from hivectl.core.usage import (
    GIB,
    Fault,
    Reliability,
    UsageBy,
    UsageRecord,
    UsageRow,
    reliability_score,
)

HOUR = 3600
Key = tuple[str, str]  # (user, node)
ES = ExecState


@dataclass(slots=True)
class Totals:
    executions: int = 0
    completed: int = 0
    failed: int = 0
    node_failed: int = 0
    lost: int = 0
    cancelled: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    memory_gib_seconds: float = 0.0
    gpu_seconds: float = 0.0
    measured_cpu_seconds: float = 0.0
    measured_executions: int = 0

    def add(self, r: UsageRecord) -> None:
        wall = r.wall_seconds
        self.executions += 1
        self.completed += r.state is ES.COMPLETED
        self.failed += r.state is ES.FAILED and r.fault is Fault.NONE
        self.node_failed += r.fault is Fault.NODE
        self.lost += r.fault is Fault.LOST
        self.cancelled += r.state is ES.CANCELLED and r.fault is Fault.NONE
        self.wall_seconds += wall
        self.cpu_seconds += r.cpu * wall
        self.memory_gib_seconds += r.memory / GIB * wall
        self.gpu_seconds += r.gpu * wall
        cpu = r.measured.cpu_seconds if r.measured is not None else None
        if cpu is not None:
            self.measured_cpu_seconds += cpu
            self.measured_executions += 1

    def merge(self, other: Totals, sign: int = 1) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + sign * getattr(other, f.name))


_ROW_FIELDS = [f.name for f in fields(Totals)]


def _row(user: str, node: str, t: Totals) -> UsageRow:
    values = {name: getattr(t, name) for name in _ROW_FIELDS}
    # Subtracting expired hours can leave float dust below zero.
    values = {k: max(0.0, v) if isinstance(v, float) else max(0, v) for k, v in values.items()}
    return UsageRow(user=user, node=node, **values)


class UsageBook:
    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._hours: dict[int, dict[Key, Totals]] = {}  # hour (epoch // 3600) -> totals
        self._all: dict[Key, Totals] = {}  # over every hour kept
        self._nodes: dict[str, list[int]] = {}  # node -> [completed, node_failed, lost]
        self._scores: dict[str, float] = {}  # node -> score: what placement reads
        self._tiers: dict[str, int] = {}  # node -> tier, of nodes below a new node's
        self.records = 0  # taken in, over this book's life
        # exec id -> when it ended, of the records taken in lately (oldest first, near
        # enough): what a new leader checks the executions it finds ended against.
        self._recent: dict[str, float] = {}

    # -- taking records in ------------------------------------------------------------
    def add(self, record: UsageRecord) -> None:
        hour = int(record.ended_at.timestamp()) // HOUR
        key = (record.user, record.node_id)
        self._hours.setdefault(hour, {}).setdefault(key, Totals()).add(record)
        self._all.setdefault(key, Totals()).add(record)
        self.records += 1
        self._recent[record.exec_id] = record.ended_at.timestamp()
        completed, fault = record.state is ES.COMPLETED, record.fault
        if completed or fault is not Fault.NONE:
            self._count(record.node_id, completed, fault is Fault.NODE, fault is Fault.LOST)

    def _count(self, node: str, completed: int, failed: int, lost: int) -> None:
        counts = self._nodes.setdefault(node, [0, 0, 0])
        counts[0] += completed
        counts[1] += failed
        counts[2] += lost
        score = self._scores[node] = reliability_score(*(max(0, n) for n in counts))
        low = tier(score)
        if low < RELIABLE_TIER:
            self._tiers[node] = low
        else:
            self._tiers.pop(node, None)

    def has(self, exec_id: str) -> bool:
        """Whether a record of this execution was taken in lately (see `forget_recent`)."""
        return exec_id in self._recent

    def forget_recent(self, before: float) -> None:
        """Stop remembering the ids of records of executions that ended before `before`."""
        recent = self._recent
        while recent:
            exec_id, ended = next(iter(recent.items()))
            if ended >= before:
                return
            del recent[exec_id]

    def expire(self, now: float) -> int:
        """Drop the hours the stream no longer keeps; how many."""
        oldest = int(now - self.retention) // HOUR
        old = [hour for hour in self._hours if hour < oldest]
        for hour in old:
            for key, totals in self._hours.pop(hour).items():
                self._all[key].merge(totals, -1)
                if self._all[key].executions <= 0:
                    del self._all[key]
                self._uncount(key[1], totals)
        return len(old)

    def _uncount(self, node: str, totals: Totals) -> None:
        self._count(node, -totals.completed, -totals.node_failed, -totals.lost)

    # -- reading ----------------------------------------------------------------------
    def reliability(self, node: str) -> Reliability:
        completed, failed, lost = (max(0, n) for n in self._nodes.get(node, [0, 0, 0]))
        score = reliability_score(completed, failed, lost)
        return Reliability(score=score, completed=completed, node_failed=failed, lost=lost)

    def score(self, node: str) -> float:
        """The node's reliability score (a dict lookup: placement asks for every node)."""
        return self._scores.get(node, Reliability().score)

    @property
    def scores(self) -> dict[str, float]:
        """node -> score, for nodes with a record (others score the prior's 0.9)."""
        return self._scores

    @property
    def tiers(self) -> dict[str, int]:
        """node -> ranking tier, of the nodes that rank below a new node."""
        return self._tiers

    def report(
        self,
        *,
        since: datetime | None,
        user: str = "",
        node: str = "",
        by: UsageBy = UsageBy.USER,
    ) -> tuple[list[UsageRow], datetime | None]:
        """Rows grouped `by`, of executions that ended since `since` (to the hour),
        and the window's start as applied."""
        start: datetime | None = None
        if since is None:
            sources: Iterable[dict[Key, Totals]] = [self._all]
        else:
            first = math.floor(since.timestamp() / HOUR)
            start = datetime.fromtimestamp(first * HOUR, UTC)
            sources = [t for hour, t in self._hours.items() if hour >= first]
        grouped: dict[Key, Totals] = {}
        for totals in sources:
            for (u, n), t in totals.items():
                if (user and u != user) or (node and n != node):
                    continue
                key = (u if by is not UsageBy.NODE else "", n if by is not UsageBy.USER else "")
                grouped.setdefault(key, Totals()).merge(t)
        rows = [_row(u, n, t) for (u, n), t in sorted(grouped.items())]
        return rows, start
