"""Placement decisions as the scheduler makes them: filter and rank nodes, charge the ledger.

Pure: no NATS. The scheduler's pass is `candidates` -> `plan` -> `Ledger.hold` for each
chosen node, and `Ledger.release` when a node declines; these tests take the same steps.
"""

from __future__ import annotations

import time
from collections import Counter

from hivectl.core.auth import Identity
from hivectl.core.jobs import (
    ExecState,
    Execution,
    Job,
    JobSpec,
    JobState,
    ResourceRequest,
    new_exec_id,
    new_job_id,
)
from hivectl.core.models import Approval, NodeEvent, NodeRecord, NodeResources, Resources
from requester.jobs import placement
from requester.jobs.ledger import Ledger, Room
from requester.nodes.liveness import Liveness
from tests.support.simnode import healthy_nodes, sample_info

KEY = Identity.generate().public_key


async def _no_events(event: NodeEvent) -> None:
    return None


def cluster(count: int, cpu: float = 4.0) -> tuple[list[NodeRecord], Liveness]:
    """`count` APPROVED nodes, all HEALTHY, ids node-0 .. node-<count-1>."""
    return healthy_nodes(count, Resources(cpu=cpu, memory=8 * 2**30, disk=100 * 2**30))


def job(count: int = 1, cpu: float = 0.0) -> Job:
    spec = JobSpec(image="busybox", count=count, resources=ResourceRequest(cpu=cpu))
    return Job(job_id=new_job_id(), spec=spec)


def place(new: Job, records: list[NodeRecord], liveness: Liveness, ledger: Ledger) -> list[str]:
    """One decision, charged to the ledger as the scheduler charges it."""
    fitting, _ = placement.candidates(new, records, liveness, ledger)
    chosen = placement.plan(new, new.spec.count, None, fitting)
    for node_id in chosen:
        ledger.hold(node_id, Room.of(new.spec.resources))
    return chosen


def test_jobs_asking_for_nothing_spread_over_every_node() -> None:
    records, liveness = cluster(5)
    ledger = Ledger()
    placed = Counter(n for _ in range(5) for n in place(job(count=2), records, liveness, ledger))
    # Every score ties (nothing is ever used up): before ties broke on the number of
    # executions a node has, all ten went to node-0 and node-1.
    assert placed == {f"node-{i}": 2 for i in range(5)}


def test_executions_already_placed_count_when_a_pass_starts() -> None:
    records, liveness = cluster(3)
    earlier = job(count=2)
    earlier.executions = [
        Execution(exec_id=new_exec_id(), job_id=earlier.job_id, node_id=node, state=state)
        for node, state in (
            ("node-0", ExecState.RUNNING),
            ("node-1", ExecState.OFFERED),
            ("node-2", ExecState.REJECTED),  # not running there: not counted
        )
    ]
    finished = job()
    finished.state = JobState.COMPLETED
    finished.executions = [
        Execution(exec_id=new_exec_id(), job_id=finished.job_id, node_id="node-2")
    ]
    ledger = Ledger.of([earlier, finished])
    assert dict(ledger.active) == {"node-0": 1, "node-1": 1}
    assert place(job(), records, liveness, ledger) == ["node-2"]


def test_held_capacity_is_not_offered_again_until_released() -> None:
    records, liveness = cluster(1, cpu=2.0)
    ledger = Ledger()
    assert place(job(cpu=1.0), records, liveness, ledger) == ["node-0"]
    assert place(job(cpu=1.0), records, liveness, ledger) == ["node-0"]
    third = job(cpu=1.0)
    fitting, why = placement.candidates(third, records, liveness, ledger)
    assert fitting == []
    assert why == "the only node has 0 CPUs free, not 1 CPU"
    ledger.release("node-0", Room(cpu=1.0))  # the node declined one of the two offers
    assert place(third, records, liveness, ledger) == ["node-0"]
    assert ledger.active["node-0"] == 2


def test_a_busier_node_loses_only_ties() -> None:
    records, liveness = cluster(2)
    ledger = Ledger()
    ledger.hold("node-0", Room(), 3)  # three executions asking for nothing
    ledger.hold("node-1", Room(cpu=1.0))  # one that takes a core
    # node-0 has more executions but more free CPU: free capacity ranks first.
    assert place(job(cpu=1.0), records, liveness, ledger) == ["node-0"]


def test_a_new_resource_report_or_record_counts_at_once() -> None:
    records, liveness = cluster(2, cpu=2.0)
    ledger = Ledger()
    assert place(job(cpu=1.0), records, liveness, ledger) == ["node-0"]
    # node-1 says it is busy with work of its own: only one core left.
    total = records[1].info.allocatable
    busy = total.model_copy(update={"cpu": 1.0})
    liveness.record_resources(
        "node-1", NodeResources(total=total, allocatable=total, available=busy)
    )
    assert place(job(cpu=1.5), records, liveness, ledger) == []
    # node-0's record is replaced: it now offers four cores.
    bigger = total.model_copy(update={"cpu": 4.0})
    info = records[0].info.model_copy(update={"total": bigger, "allocatable": bigger})
    records[0] = records[0].model_copy(update={"info": info})
    assert place(job(cpu=1.5), records, liveness, ledger) == ["node-0"]


# -- why a job waits -------------------------------------------------------------------


def node(
    node_id: str,
    *,
    approval: Approval = Approval.APPROVED,
    executors: tuple[str, ...] = ("docker",),
    labels: dict[str, str] | None = None,
    cpu: float = 4.0,
) -> NodeRecord:
    total = Resources(cpu=cpu, memory=8 * 2**30, disk=100 * 2**30)
    info = sample_info(labels).model_copy(
        update={"total": total, "allocatable": total, "executors": list(executors)}
    )
    return NodeRecord(node_id=node_id, public_key=KEY, info=info, approval=approval)


def why(spec: JobSpec, records: list[NodeRecord], healthy: int | None = None) -> str:
    """The reason the job waits; the first `healthy` nodes heartbeat (default: all)."""
    liveness = Liveness(30.0, 60.0, _no_events)
    for record in records[:healthy]:
        liveness.heard(record.node_id, time.monotonic())
    fitting, reason = placement.candidates(Job(job_id=new_job_id(), spec=spec), records,
                                           liveness, Ledger())  # fmt: skip
    assert fitting == []
    return reason


DOCKER = JobSpec(image="busybox")
PROCESS = JobSpec(engine="process", command=["true"])
P, R = Approval.PENDING, Approval.REJECTED


def test_no_node_at_all_or_none_approved() -> None:
    assert why(DOCKER, []) == "no compute node has joined the cluster"
    nodes = [node("a", approval=P), node("b", approval=R), node("c", approval=P)]
    assert why(DOCKER, nodes) == "no node is APPROVED: 2 PENDING, 1 REJECTED " \
        "(approve one: hivectl node approve ID)"  # fmt: skip


def test_approved_nodes_that_are_not_healthy() -> None:
    nodes = [node("a"), node("b", approval=P)]
    assert why(DOCKER, nodes, healthy=0) == "no APPROVED node is HEALTHY: 1 UNKNOWN; also 1 PENDING"


def test_no_node_has_the_engine() -> None:
    nodes = [node("a"), node("b")]
    assert why(PROCESS, nodes) == "no node has the process executor enabled"
    with_others = [*nodes, node("c", approval=P, executors=("process",)), node("d")]
    assert why(PROCESS, with_others, healthy=2) == (
        "no eligible node has the process executor enabled; also 1 PENDING, 1 UNKNOWN"
    )


def test_constraints_that_match_nothing() -> None:
    nodes = [node("a", labels={"zone": "earth"}), node("b", labels={"zone": "moon"})]
    mars = JobSpec(image="busybox", constraints=["zone=mars"])
    assert why(mars, nodes) == "no node matches zone=mars"
    assert why(mars, [*nodes, node("c", executors=("process",))]) == (
        "no eligible node matches zone=mars; also 1 without the docker executor"
    )


def test_not_enough_resources_names_the_first_one_short_and_the_most_free() -> None:
    eight = JobSpec(image="busybox", resources=ResourceRequest(cpu=8))
    assert why(eight, [node("a", cpu=4), node("b", cpu=2)]) == (
        "2 nodes, none with 8 CPUs free (most free: 4 CPUs)"
    )
    memory = JobSpec(image="busybox", resources=ResourceRequest(memory="16GiB"))
    assert why(memory, [node("a"), node("b", labels={"x": "y"}), node("c", approval=P)]) == (
        "2 eligible nodes, none with 16GiB memory free (most free: 8GiB memory); also 1 PENDING"
    )
    assert why(eight, [node("a", cpu=4)]) == "the only node has 4 CPUs free, not 8 CPUs"


# -- a node's max_executions -------------------------------------------------------------


def limited(record: NodeRecord, max_executions: int) -> NodeRecord:
    info = record.info.model_copy(update={"max_executions": max_executions})
    return record.model_copy(update={"info": info})


def test_a_node_at_its_max_executions_is_offered_nothing_until_one_ends() -> None:
    records, liveness = cluster(1)
    records = [limited(records[0], 2)]
    ledger = Ledger()
    # A job of six on a node that runs two at once: two offers, not six.
    six = job(count=6)
    assert place(six, records, liveness, ledger) == ["node-0", "node-0"]
    fitting, why = placement.candidates(six, records, liveness, ledger)
    assert (fitting, why) == ([], "the only node is at its max_executions")
    ledger.release("node-0", Room())  # one ended
    assert place(six, records, liveness, ledger) == ["node-0"]


def test_full_nodes_are_counted_in_why_a_job_waits() -> None:
    records, liveness = cluster(3)
    records = [limited(r, 1) for r in records[:2]] + records[2:]
    ledger = Ledger()
    ledger.hold("node-0", Room())
    ledger.hold("node-1", Room())
    # The one node without a limit gets the work; the full ones are skipped.
    assert place(job(count=3), records, liveness, ledger) == ["node-2"] * 3
    fitting, why = placement.candidates(job(), records[:2], liveness, ledger)
    assert (fitting, why) == ([], "2 nodes, all at their max_executions")
    big = job(cpu=8.0)
    fitting, why = placement.candidates(big, records, liveness, ledger)
    assert (
        why == "the only eligible node has 4 CPUs free, not 8 CPUs; also 2 at their max_executions"
    )


def test_a_node_is_held_where_the_big_job_would_fit_and_drains_soonest() -> None:
    records, liveness = cluster(3, cpu=4.0)
    small = {**records[2].info.allocatable.model_dump(), "cpu": 2.0}
    records[2] = records[2].model_copy(
        update={"info": records[2].info.model_copy(update={"allocatable": Resources(**small)})}
    )
    ledger = Ledger()
    ledger.hold("node-0", Room(cpu=3.0))
    ledger.hold("node-1", Room(cpu=1.0))  # the most free of those a 4-CPU job fits on
    big = job(cpu=4.0)
    assert placement.reservable(big, records, liveness, ledger) == "node-1"
    # Once held, the hold stays where it is while that node stays eligible.
    ledger.hold("node-1", Room(cpu=2.5))
    assert placement.reservable(big, records, liveness, ledger, keep="node-1") == "node-1"
    assert placement.reservable(big, records, liveness, ledger) == "node-0"
    assert placement.reservable(job(cpu=8.0), records, liveness, ledger) is None


def test_a_batch_job_ranks_a_sample_that_moves_round_the_cluster() -> None:
    records, liveness = cluster(300)
    ledger = Ledger()
    sample = placement.sample_size(1, None)
    assert sample == placement.SAMPLE
    seen: set[str] = set()
    for start in range(0, 300, sample):
        fitting, why = placement.candidates(
            job(), records, liveness, ledger, sample=sample, start=start
        )
        assert (len(fitting), why) == (sample, "")
        seen.update(c.node_id for c in fitting)
    assert len(seen) == 300  # successive jobs look at every node in turn
    # Nodes the pass already tried (or held for another job) are never in the sample.
    skip = {f"node-{i}" for i in range(10)}
    fitting, _ = placement.candidates(
        job(), records, liveness, ledger, sample=sample, start=0, skip=skip
    )
    assert len(fitting) == sample and not skip & {c.node_id for c in fitting}


def test_a_sample_falls_back_to_every_node_when_few_fit() -> None:
    records, liveness = cluster(300, cpu=1.0)
    ledger = Ledger()
    for record in records[:280]:  # only 20 nodes have room for a whole core
        ledger.hold(record.node_id, Room.of(ResourceRequest(cpu=0.5)))
    big = job(cpu=1.0)
    fitting, why = placement.candidates(big, records, liveness, ledger, sample=64, start=0)
    assert (len(fitting), why) == (20, "")  # all of them, ranked as without a sample
    for record in records[280:]:
        ledger.hold(record.node_id, Room.of(ResourceRequest(cpu=0.5)))
    fitting, why = placement.candidates(big, records, liveness, ledger, sample=64, start=0)
    assert not fitting and "300" in why  # none fits: the full pass says why


def test_ops_jobs_and_named_nodes_look_at_every_node() -> None:
    assert placement.sample_size(placement.EVERY_NODE, None) == 0
    assert placement.sample_size(3, frozenset({"node-1"})) == 0
    assert placement.sample_size(100, None) == 200  # twice what is missing
