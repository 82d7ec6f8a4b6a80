"""Cordon and drain: what an operator's request changes in a node record, the events it
makes, and what the leading requester does while a node drains.

A cordoned node gets no new executions (placement skips it); what runs there goes on.
A drain cordons the node, then takes its batch work off: executions may finish on
their own until the drain's deadline; then the leader moves the ones left, as work an
agent stops at shutdown is moved (CANCELLED, which is no failure, so the work is placed
again elsewhere without using a retry), and the node is told to stop them. `force`
puts the deadline at the start. Ops jobs run once on every node: their executions are
not moved and do not hold a drain up. Once no batch execution is left the drain ends
(an event); the node stays cordoned until an operator uncordons it.

Everything a drain needs is in the node record (its deadline as a time, its progress),
so a requester restart or a new leader carries on with it. Only the leader acts on a
drain, each tick, for the nodes the registry has draining; its record writes check the
drain is still the one it looked at, so an operator's uncordon or a new drain wins.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from hivectl.core.jobs import ExecState, JobType
from hivectl.core.models import Drain, NodeEvent, NodeRecord, utcnow
from requester.jobs.executions import MOVED_OFF, mark_moved, missing
from requester.jobs.fenced import Deposed, FencedJobs
from requester.nodes.registry import Registry

log = logging.getLogger("hive.requester.drain")
Update = dict[str, object]  # the record fields a change sets
SCHEDULABLE, CORDONED = "schedulable", "cordoned"
DRAINING, DRAINED, CANCELLED = "draining", "drained", "cancelled"


# -- the rules --------------------------------------------------------------------------
def cordoned(record: NodeRecord, reason: str) -> Update | None:
    """Cordon; a node cordoned already keeps its first reason."""
    return None if record.cordoned else {"cordoned": True, "cordon_reason": reason}


def uncordoned(record: NodeRecord, now: datetime) -> Update | None:
    """Back in service; a drain still going on ends, cancelled."""
    if not record.cordoned and not record.draining:
        return None
    update: Update = {"cordoned": False, "cordon_reason": ""}
    if record.drain is not None and record.drain.active:
        update["drain"] = _ended(record.drain, now, CANCELLED)
    return update


def drain_started(
    record: NodeRecord, now: datetime, deadline: float | None, force: bool, reason: str
) -> Update:
    """Cordon and drain: batch work may finish until `deadline` seconds from now (None:
    no deadline; `force`: none may). A drain going on gets the new deadline and keeps
    its progress."""
    until = now if force else None if deadline is None else now + timedelta(seconds=deadline)
    going = record.drain if record.drain is not None and record.drain.active else None
    drain = Drain(
        started_at=going.started_at if going else now,
        deadline=until,
        force=force,
        reason=reason,
        remaining=going.remaining if going else None,
        moved=going.moved if going else 0,
    )
    cordon_reason = record.cordon_reason if record.cordoned else reason
    return {"cordoned": True, "cordon_reason": cordon_reason, "drain": drain}


def drain_cancelled(record: NodeRecord, now: datetime) -> Update | None:
    """The drain stops; the node stays cordoned (Nomad's -disable -keep-ineligible)."""
    if record.drain is None or not record.drain.active:
        return None
    return {"drain": _ended(record.drain, now, CANCELLED)}


def due(drain: Drain, now: datetime) -> bool:
    """The batch work left must be moved now."""
    return drain.deadline is not None and now >= drain.deadline


def progressed(record: NodeRecord, started_at: datetime, left: int, moved: int) -> Update | None:
    """The leader's count of the drain's progress, if it is still the drain it counted."""
    drain = _same(record, started_at)
    if drain is None or (drain.remaining, drain.moved) == (left, moved):
        return None
    return {"drain": drain.model_copy(update={"remaining": left, "moved": moved})}


def finished(record: NodeRecord, started_at: datetime, now: datetime, moved: int) -> Update | None:
    """No batch work is left: the drain is done, if it is still the one looked at."""
    drain = _same(record, started_at)
    if drain is None:
        return None
    done = drain.model_copy(update={"remaining": 0, "moved": moved})
    return {"drain": _ended(done, now, DRAINED)}


def _same(record: NodeRecord, started_at: datetime) -> Drain | None:
    drain = record.drain
    return drain if drain is not None and drain.active and drain.started_at == started_at else None


def _ended(drain: Drain, now: datetime, outcome: str) -> Drain:
    return drain.model_copy(update={"ended_at": now, "outcome": outcome})


def transitions(before: NodeRecord, after: NodeRecord, reason: str) -> list[NodeEvent]:
    """The events a change of cordon or drain makes, in the order they happened."""
    node_id, events = before.node_id, []
    old, new = before.drain, after.drain
    if old is not None and old.active and new is not None and not new.active:
        events.append(_event(node_id, "drain", DRAINING, new.outcome, reason))
    if not before.cordoned and after.cordoned:
        events.append(_event(node_id, "cordon", SCHEDULABLE, CORDONED, reason))
    if before.cordoned and not after.cordoned:
        events.append(_event(node_id, "uncordon", CORDONED, SCHEDULABLE, reason))
    if new is not None and new.active and not _same_terms(old, new):
        events.append(_event(node_id, "drain", DRAINING if old and old.active else "", DRAINING,
                             reason))  # fmt: skip
    return events


def _same_terms(old: Drain | None, new: Drain) -> bool:
    return old is not None and old.active and (old.deadline, old.force) == (new.deadline, new.force)


def _event(
    node_id: str, name: Literal["cordon", "uncordon", "drain"], old: str, new: str, reason: str
) -> NodeEvent:
    return NodeEvent(node_id=node_id, event=name, old=old, new=new, reason=reason)


def end_reason(moved: int, ops: int) -> str:
    """What a drain that ran its course did, for its end event."""
    words = ["no batch work left on the node"]
    words.append(f"{_count(moved, 'execution')} moved to other nodes" if moved else "none moved")
    if ops:
        words.append(f"{_count(ops, 'ops execution')} left running")
    return "; ".join(words)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass(slots=True)
class Work:
    """What runs on a node, as a drain sees it."""

    batch: dict[str, set[str]] = field(default_factory=dict)  # job id -> active exec ids
    ops: int = 0  # active executions of ops jobs: left alone

    @property
    def left(self) -> int:
        return sum(len(ids) for ids in self.batch.values())


def work_on(active: dict[str, str], job_type: Callable[[str], JobType | None]) -> Work:
    """Sort `active` ({exec id: job id} on a node) into batch work and ops work."""
    work = Work()
    for exec_id, job_id in active.items():
        kind = job_type(job_id)
        if kind is JobType.OPS:
            work.ops += 1
        elif kind is JobType.BATCH:
            work.batch.setdefault(job_id, set()).add(exec_id)
    return work


# -- the leader -------------------------------------------------------------------------
class Drainer:
    """Carries out drains for the leader: each tick, per draining node, moves the batch
    work once the deadline has passed, records the progress, and ends the drain."""

    def __init__(
        self,
        registry: Registry,
        store: FencedJobs,
        *,
        kick: Callable[[str], None],
        valid: Callable[[], bool],
    ) -> None:
        self._registry = registry
        self._store = store
        self._kick = kick
        self._valid = valid

    async def tick(self) -> None:
        now = utcnow()
        for node_id in self._registry.draining():
            try:
                await self._step(node_id, now)
            except Deposed as exc:  # a newer leader carries the drains on
                log.info("drains left to the new leader: %s", exc)
                return
            except Exception:  # NATS trouble: the next tick tries again
                log.exception("drain of node %s: step failed", node_id, extra={"node_id": node_id})

    def _work(self, node_id: str) -> Work:
        def job_type(job_id: str) -> JobType | None:
            record = self._store.record(job_id)
            return None if record is None else record.spec.type

        return work_on(self._store.active_on(node_id), job_type)

    async def _step(self, node_id: str, now: datetime) -> None:
        record = self._registry.get(node_id)
        drain = None if record is None else record.drain
        if drain is None or not drain.active:
            return
        work, moved = self._work(node_id), drain.moved
        if work.batch and due(drain, now):
            moved += await self._move(node_id, work.batch, drain.force)
            work = self._work(node_id)
        if not self._valid():  # the record writes below are the leader's alone
            return
        started = drain.started_at
        if work.batch:
            change = functools.partial(progressed, started_at=started, left=work.left, moved=moved)
            await self._registry.change(node_id, change)
            return
        ended = functools.partial(finished, started_at=started, now=now, moved=moved)
        before, after = await self._registry.change(node_id, ended)
        for event in transitions(before, after, end_reason(moved, work.ops)):
            await self._registry.emit(event)

    async def _move(self, node_id: str, batch: dict[str, set[str]], force: bool) -> int:
        """Move the batch work off `node_id`: how many executions moved."""
        why = f"node {node_id} drained ({'forced' if force else 'its deadline passed'})"
        error, moved = f"{MOVED_OFF}{why}", 0
        for job_id, exec_ids in sorted(batch.items()):
            ids = frozenset(exec_ids)
            change = functools.partial(mark_moved, exec_ids=ids, reason=why)
            after = await self._store.change(job_id, change)
            if after is None:
                continue
            done = sum(
                e.exec_id in ids and e.state is ExecState.CANCELLED and e.error == error
                for e in after.executions
            )
            if done:
                log.info(
                    "%s: moving %d execution(s) of %s to other nodes", why, done, job_id,
                    extra={"node_id": node_id, "job_id": job_id},
                )  # fmt: skip
            moved += done
            if missing(after)[0]:
                self._kick(job_id)
        return moved
