"""Usage records, the book that sums them, and reliability in placement."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hivectl.core.jobs import (
    ExecState,
    Execution,
    Job,
    JobSpec,
    Measured,
    ResourceRequest,
    new_exec_id,
    new_job_id,
)
from hivectl.core.usage import Fault, UsageBy, UsageRecord, reliability_score
from requester.jobs import placement
from requester.jobs.executions import STOPPED_BY_NODE
from requester.jobs.ledger import Ledger, Room
from requester.usage.book import UsageBook
from requester.usage.records import fault_of, usage_record, usage_records
from tests.unit.test_placement import cluster, job

ES = ExecState
NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
GIB = 2**30


def record(user: str = "alice", node: str = "n1", *, state: ES = ES.COMPLETED,
           fault: Fault = Fault.NONE, cpu: float = 1.0, wall: float = 10.0,
           ended: datetime = NOW, measured: float | None = None) -> UsageRecord:  # fmt: skip
    return UsageRecord(
        exec_id=new_exec_id(), job_id=new_job_id(), node_id=node, user=user, state=state,
        fault=fault, started_at=ended - timedelta(seconds=wall), ended_at=ended,
        wall_seconds=wall, cpu=cpu, memory=2 * GIB, gpu=1,
        measured=None if measured is None else Measured(cpu_seconds=measured),
    )  # fmt: skip


def test_a_report_sums_requested_resources_times_wall_time_per_user_or_node() -> None:
    book = UsageBook(retention=30 * 86400)
    for r in (record(cpu=2.0, measured=15.0), record(node="n2", wall=5.0),
              record("bob", state=ES.FAILED, cpu=0.5, wall=4.0)):  # fmt: skip
        book.add(r)
    rows, start = book.report(since=None)
    assert start is None
    alice, bob = rows
    assert (alice.user, alice.executions, alice.completed) == ("alice", 2, 2)
    assert alice.cpu_seconds == 2.0 * 10 + 1.0 * 5
    assert alice.memory_gib_seconds == 2 * 15 and alice.gpu_seconds == 15
    assert (alice.measured_cpu_seconds, alice.measured_executions) == (15.0, 1)
    assert (bob.failed, bob.cpu_seconds) == (1, 2.0)
    by_node, _ = book.report(since=None, by=UsageBy.NODE)
    assert [(r.user, r.node, r.executions) for r in by_node] == [("", "n1", 2), ("", "n2", 1)]
    both, _ = book.report(since=None, user="alice", node="n1", by=UsageBy.USER_NODE)
    assert [(r.user, r.node, r.cpu_seconds) for r in both] == [("alice", "n1", 20.0)]


def test_since_counts_whole_hours_of_when_work_ended() -> None:
    book = UsageBook(retention=30 * 86400)
    book.add(record(ended=NOW - timedelta(days=2)))
    book.add(record(ended=NOW))
    rows, start = book.report(since=NOW - timedelta(minutes=10))
    assert start == datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # the hour it falls in
    assert [r.executions for r in rows] == [1]
    rows, _ = book.report(since=NOW - timedelta(days=3))
    assert [r.executions for r in rows] == [2]


def test_hours_past_retention_leave_the_totals_and_the_reliability() -> None:
    book = UsageBook(retention=86400)
    book.add(record(state=ES.LOST, fault=Fault.LOST, ended=NOW - timedelta(days=3)))
    book.add(record(ended=NOW))
    assert book.reliability("n1").lost == 1
    assert book.expire(NOW.timestamp()) == 1
    rows, _ = book.report(since=None)
    assert [r.executions for r in rows] == [1]
    assert (book.reliability("n1").completed, book.reliability("n1").lost) == (1, 0)
    assert book.score("n1") == reliability_score(1, 0, 0)


def test_reliability_has_a_prior_a_new_node_is_not_shut_out_and_faults_pull_it_down() -> None:
    book = UsageBook(retention=86400)
    assert book.score("new") == 0.9
    book.add(record(node="lossy", state=ES.LOST, fault=Fault.LOST))
    assert round(book.score("lossy"), 2) == 0.82
    for _ in range(100):
        book.add(record(node="good"))
    book.add(record(node="good", state=ES.FAILED))  # its own exit code: not the node's
    book.add(record(node="good", state=ES.CANCELLED))  # someone stopped it
    assert book.reliability("good").completed == 100 and book.score("good") > 0.99
    book.add(record(node="broken", state=ES.FAILED, fault=Fault.NODE))
    assert book.reliability("broken").node_failed == 1 and book.score("broken") < 0.9


def execution(state: ES, **fields: object) -> Execution:
    return Execution(exec_id=new_exec_id(), job_id=new_job_id(), node_id="n1", state=state,
                     **fields)  # type: ignore[arg-type]  # fmt: skip


def test_whose_fault_an_end_is() -> None:
    assert fault_of(execution(ES.LOST)) is Fault.LOST
    assert (
        fault_of(execution(ES.FAILED, exit_code=None, error="docker engine unavailable"))
        is Fault.NODE
    )
    assert fault_of(execution(ES.FAILED, exit_code=3)) is Fault.NONE
    assert fault_of(execution(ES.CANCELLED, error=f"{STOPPED_BY_NODE}shutting down")) is Fault.NODE
    assert fault_of(execution(ES.CANCELLED, error="stopped by an operator")) is Fault.NONE
    assert fault_of(execution(ES.COMPLETED, exit_code=0)) is Fault.NONE


def test_a_record_says_who_used_what_for_how_long() -> None:
    spec = JobSpec(image="busybox", resources=ResourceRequest(cpu=0.5, memory="1GiB"))
    job = Job(job_id=new_job_id(), spec=spec, owner="alice")
    start = NOW - timedelta(seconds=8)
    done = Execution(exec_id=new_exec_id(), job_id=job.job_id, node_id="n1",
                     state=ES.COMPLETED, started_at=start, ended_at=NOW)  # fmt: skip
    declined = Execution(exec_id=new_exec_id(), job_id=job.job_id, node_id="n2",
                         state=ES.REJECTED, ended_at=NOW)  # fmt: skip
    job = job.model_copy(update={"executions": [done, declined]})
    (made,) = usage_records(job, [done, declined])  # a declined offer never ran: none
    assert (made.user, made.wall_seconds, made.cpu, made.memory) == ("alice", 8.0, 0.5, GIB)
    never_ran = done.model_copy(update={"state": ES.LOST, "started_at": None})
    assert usage_record(job, never_ran).wall_seconds == 0.0  # type: ignore[union-attr]


def test_placement_prefers_reliable_nodes_and_keeps_a_job_off_those_below_its_minimum() -> None:
    records, liveness = cluster(3)
    scores = {"node-0": 0.82, "node-1": 0.95}  # node-2 has no record: 0.9, as good
    book = UsageBook(retention=86400)
    book.add(record(node="node-0", state=ES.LOST, fault=Fault.LOST))
    for _ in range(90):
        book.add(record(node="node-1"))
    assert book.tiers == {"node-0": 8}  # only nodes ranked below a new node's tier
    ledger = Ledger()

    def placed(one: Job) -> list[str]:
        fitting, _ = placement.candidates(
            one, records, liveness, ledger, scores=scores, tiers=book.tiers
        )
        chosen = placement.plan(one, one.spec.count, None, fitting)
        for node_id in chosen:
            ledger.hold(node_id, Room.of(one.spec.resources))
        return chosen

    # Work spreads over the nodes that lost nothing (0.95 and 0.9 rank alike) while they
    # have room; the lossy one gets only what they cannot take.
    picked = Counter(n for _ in range(8) for n in placed(job(cpu=1.0)))
    assert picked == {"node-1": 4, "node-2": 4}
    assert placed(job(cpu=1.0)) == ["node-0"]
    picky = job().model_copy(update={"spec": JobSpec(image="busybox", min_reliability=0.93)})
    fitting, why = placement.candidates(picky, records, liveness, Ledger(), scores=scores)
    assert [c.node_id for c in fitting] == ["node-1"]
    pickier = job().model_copy(update={"spec": JobSpec(image="busybox", min_reliability=0.97)})
    fitting, why = placement.candidates(pickier, records, liveness, Ledger(), scores=scores)
    assert fitting == []
    assert why == "no node has reliability 0.97 or more (best: 0.95; see hivectl node describe)"


async def test_a_submitter_sees_its_own_usage_only() -> None:
    from hivectl.core import codec
    from hivectl.core.usage import UsageReportReply, UsageReportRequest
    from hivectl.core.users import Role
    from requester.routing import Caller, Refusal, serving
    from requester.usage.api import UsageApi

    book = UsageBook(retention=86400)
    book.add(record("alice"))
    book.add(record("bob"))
    roles = {"alice": Role.SUBMITTER, "vera": Role.VIEWER}
    roles["admin"] = Role.ADMIN
    api = UsageApi(book, resolve_node=str, limits=codec.Limits())

    async def users(caller: str, **asked: str) -> list[str]:
        with serving(Caller(caller, roles[caller], caller)):
            reply = await api.report(codec.encode(UsageReportRequest(**asked)))
        assert isinstance(reply, UsageReportReply)
        return [r.user for r in reply.rows]

    assert await users("alice") == ["alice"]
    assert await users("vera") == ["alice", "bob"]
    assert await users("admin", user="bob") == ["bob"]
    try:
        await users("alice", user="bob")
    except Refusal as exc:
        assert exc.code == "forbidden" and "alice may see its own usage only" in exc.reason
    else:
        raise AssertionError("a submitter read another user's usage")
