"""The rules of cordon and drain, pure: record changes, events, what a drain moves.

The leader's loop and the API apply exactly these (see requester/nodes/drain.py); the
e2e tests in tests/e2e/test_drain.py show them with real processes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from hivectl.core.auth import Identity
from hivectl.core.jobs import ExecState, Execution, Job, JobSpec, JobState, JobType
from hivectl.core.models import Approval, Drain, NodeEvent, NodeRecord
from requester.jobs import placement
from requester.jobs.executions import failures, mark_moved, missing
from requester.jobs.ledger import Ledger
from requester.nodes import drain
from requester.nodes.liveness import Liveness
from tests.support.simnode import sample_info

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = Identity.generate().public_key
JOB = "j-00000000000000aa"


def node(node_id: str = "node-1", **fields: Any) -> NodeRecord:
    record = NodeRecord(
        node_id=node_id, public_key=KEY, info=sample_info(), approval=Approval.APPROVED
    )
    return record.model_copy(update=fields)


def changed(record: NodeRecord, update: dict[str, object] | None) -> NodeRecord:
    assert update is not None
    return record.model_copy(update=update)


def events(before: NodeRecord, after: NodeRecord, reason: str = "") -> list[tuple[str, ...]]:
    return [(e.event, e.old, e.new, e.reason) for e in drain.transitions(before, after, reason)]


# -- cordon -------------------------------------------------------------------------------


def test_cordon_then_uncordon_each_make_one_event_and_repeating_them_changes_nothing() -> None:
    free = node()
    held = changed(free, drain.cordoned(free, "disk errors"))
    assert (held.cordoned, held.cordon_reason) == (True, "disk errors")
    assert events(free, held, "disk errors") == [
        ("cordon", "schedulable", "cordoned", "disk errors")
    ]
    assert drain.cordoned(held, "again") is None  # the first reason stays
    back = changed(held, drain.uncordoned(held, T0))
    assert (back.cordoned, back.cordon_reason, back.drain) == (False, "", None)
    assert events(held, back, "fixed") == [("uncordon", "cordoned", "schedulable", "fixed")]
    assert drain.uncordoned(back, T0) is None


# -- drain --------------------------------------------------------------------------------


def test_a_drain_cordons_and_sets_its_deadline_from_now() -> None:
    free = node()
    draining = changed(free, drain.drain_started(free, T0, 600.0, False, "kernel update"))
    assert draining.cordoned and draining.draining
    assert draining.drain == Drain(
        started_at=T0, deadline=T0 + timedelta(minutes=10), reason="kernel update"
    )
    assert events(free, draining, "kernel update") == [
        ("cordon", "schedulable", "cordoned", "kernel update"),
        ("drain", "", "draining", "kernel update"),
    ]
    assert not drain.due(draining.drain, T0 + timedelta(seconds=599))  # type: ignore[arg-type]
    assert drain.due(draining.drain, T0 + timedelta(seconds=600))  # type: ignore[arg-type]


def test_force_is_due_at_once_and_no_deadline_never() -> None:
    forced = changed(node(), drain.drain_started(node(), T0, 600.0, True, ""))
    assert forced.drain is not None and drain.due(forced.drain, T0)
    endless = changed(node(), drain.drain_started(node(), T0, None, False, ""))
    assert endless.drain is not None and endless.drain.deadline is None
    assert not drain.due(endless.drain, T0 + timedelta(days=3650))


def test_a_drain_given_again_keeps_its_progress_and_a_cordoned_node_its_reason() -> None:
    cordoned = node(cordoned=True, cordon_reason="disk errors")
    first = changed(cordoned, drain.drain_started(cordoned, T0, 600.0, False, "patch"))
    assert first.cordon_reason == "disk errors"
    assert events(cordoned, first, "patch") == [("drain", "", "draining", "patch")]
    counted = changed(first, drain.progressed(first, T0, left=3, moved=1))
    later = T0 + timedelta(seconds=30)
    sooner = changed(counted, drain.drain_started(counted, later, 5.0, False, "patch"))
    assert sooner.drain is not None
    assert (sooner.drain.started_at, sooner.drain.remaining, sooner.drain.moved) == (T0, 3, 1)
    assert sooner.drain.deadline == later + timedelta(seconds=5)
    assert events(counted, sooner, "patch") == [("drain", "draining", "draining", "patch")]
    # The same terms again: nothing new to say.
    same = changed(sooner, drain.drain_started(sooner, later, 5.0, False, "patch"))
    assert events(sooner, same) == []


def test_progress_and_the_end_apply_only_to_the_drain_that_was_counted() -> None:
    draining = changed(node(), drain.drain_started(node(), T0, 60.0, False, ""))
    assert drain.progressed(draining, T0, left=0, moved=0) is not None
    counted = changed(draining, drain.progressed(draining, T0, left=2, moved=0))
    assert drain.progressed(counted, T0, left=2, moved=0) is None  # unchanged: no write
    other_start = T0 - timedelta(seconds=1)
    assert drain.progressed(counted, other_start, left=1, moved=0) is None
    assert drain.finished(counted, other_start, T0, 0) is None
    end = T0 + timedelta(minutes=1)
    done = changed(counted, drain.finished(counted, T0, end, moved=2))
    assert done.drain is not None and not done.draining and done.cordoned  # stays cordoned
    assert (done.drain.outcome, done.drain.ended_at, done.drain.moved) == ("drained", end, 2)
    assert done.drain.remaining == 0
    assert drain.finished(done, T0, end, 2) is None  # ended already
    reason = drain.end_reason(2, 1)
    assert events(counted, done, reason) == [("drain", "draining", "drained", reason)]
    assert reason == (
        "no batch work left on the node; 2 executions moved to other nodes; "
        "1 ops execution left running"
    )
    assert drain.end_reason(0, 0) == "no batch work left on the node; none moved"


def test_cancelling_keeps_the_node_cordoned_and_uncordoning_cancels_first() -> None:
    draining = changed(node(), drain.drain_started(node(), T0, 60.0, False, ""))
    kept = changed(draining, drain.drain_cancelled(draining, T0))
    assert kept.cordoned and not kept.draining
    assert kept.drain is not None and kept.drain.outcome == "cancelled"
    assert events(draining, kept, "wrong node") == [
        ("drain", "draining", "cancelled", "wrong node")
    ]
    assert drain.drain_cancelled(kept, T0) is None
    back = changed(draining, drain.uncordoned(draining, T0))
    assert not back.cordoned and back.drain is not None and back.drain.outcome == "cancelled"
    assert events(draining, back, "done") == [
        ("drain", "draining", "cancelled", "done"),
        ("uncordon", "cordoned", "schedulable", "done"),
    ]


def test_a_drain_moves_batch_work_and_leaves_ops_work() -> None:
    active = {"e-1": "j-batch", "e-2": "j-batch", "e-3": "j-ops", "e-4": "j-gone"}
    kinds = {"j-batch": JobType.BATCH, "j-ops": JobType.OPS}
    work = drain.work_on(active, kinds.get)
    assert work.batch == {"j-batch": {"e-1", "e-2"}} and work.ops == 1 and work.left == 2


# -- moving an execution -------------------------------------------------------------------


def _job(retries: int, *on: tuple[str, ExecState]) -> Job:
    executions = [
        Execution(exec_id=f"e-{i:016x}", job_id=JOB, node_id=n, state=s)
        for i, (n, s) in enumerate(on)
    ]
    spec = JobSpec(engine="process", command=["true"], count=len(on), retries=retries)
    return Job(job_id=JOB, spec=spec, state=JobState.RUNNING, executions=executions)


def test_moved_work_is_placed_again_without_using_a_retry() -> None:
    job = _job(0, ("node-1", ExecState.RUNNING), ("node-2", ExecState.RUNNING))
    moved = mark_moved(job, frozenset({"e-0000000000000000"}), "node node-1 drained")
    assert moved is not None
    first = moved.executions[0]
    assert first.state is ExecState.CANCELLED
    assert first.error == "moved off its node: node node-1 drained"
    assert moved.executions[1].state is ExecState.RUNNING  # another node's: untouched
    assert failures(moved) == [] and missing(moved) == (1, None)  # placed again, no retry
    assert moved.state is JobState.RUNNING
    # Nothing active left to move, or the job ended: no change.
    assert mark_moved(moved, frozenset({"e-0000000000000000"}), "again") is None
    done = moved.model_copy(update={"state": JobState.COMPLETED})
    assert mark_moved(done, frozenset({"e-0000000000000001"}), "late") is None


# -- placement --------------------------------------------------------------------------


def _cluster(*records: NodeRecord) -> tuple[list[NodeRecord], Liveness]:
    async def no_events(event: NodeEvent) -> None:
        return None

    liveness = Liveness(30.0, 60.0, no_events)
    for record in records:
        liveness.heard(record.node_id, time.monotonic())
    return list(records), liveness


def _batch() -> Job:
    return Job(job_id=JOB, spec=JobSpec(image="busybox"))


def test_placement_skips_cordoned_nodes_and_says_so() -> None:
    records, liveness = _cluster(node("node-1", cordoned=True), node("node-2"))
    fitting, _ = placement.candidates(_batch(), records, liveness, Ledger())
    assert [c.node_id for c in fitting] == ["node-2"]

    records, liveness = _cluster(node("node-1", cordoned=True))
    assert placement.candidates(_batch(), records, liveness, Ledger()) == (
        [],
        "the only APPROVED node is cordoned (hivectl node uncordon ID puts one back)",
    )
    both = [node("node-1", cordoned=True), node("node-2", cordoned=True)]
    records, liveness = _cluster(*both, node("node-3", approval=Approval.PENDING))
    assert placement.candidates(_batch(), records, liveness, Ledger())[1] == (
        "all 2 APPROVED nodes are cordoned (hivectl node uncordon ID puts one back); also 1 PENDING"
    )
    records, liveness = _cluster(node("node-1", cordoned=True))
    records.append(node("node-2"))  # never heard from: UNKNOWN
    assert placement.candidates(_batch(), records, liveness, Ledger())[1] == (
        "no other APPROVED node is HEALTHY: 1 UNKNOWN; also 1 cordoned"
    )
    pinned = Job(job_id=JOB, spec=JobSpec(image="busybox", constraints=["zone=mars"]))
    records, liveness = _cluster(node("node-1", cordoned=True), node("node-2"))
    assert placement.candidates(pinned, records, liveness, Ledger())[1] == (
        "no eligible node matches zone=mars; also 1 cordoned"
    )
