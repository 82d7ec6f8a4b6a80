"""The fair queue's parts without NATS: decayed usage, the queue's order, the quota
gate, and quota limits with their default."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from hivectl.core.jobs import Job, JobSpec, ResourceRequest
from hivectl.core.quotas import Quota, QuotaSetRequest
from requester.jobs.fairqueue import FairQueue, Place
from requester.jobs.fairshare import FairShare, weight
from requester.jobs.ledger import Room
from requester.jobs.quotagate import UNLIMITED, QuotaGate
from requester.quotas import _applied

HOUR = 3600.0
CPU = Room(cpu=1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_usage_is_cpu_seconds_while_running_and_halves_each_half_life() -> None:
    clock = Clock()
    share = FairShare(HOUR, clock)
    share.began("e1", "alice", Room(cpu=2.0))
    clock.now += 60
    assert share.usage("alice") == pytest.approx(120, rel=0.01)  # 2 CPUs x 60s, barely decayed
    share.ended("e1")
    ran = share.usage("alice")
    clock.now += HOUR
    assert share.usage("alice") == pytest.approx(ran / 2)
    assert share.usage("bob") == 0.0


def test_usage_rebuilt_from_records_matches_usage_kept_live() -> None:
    """A new leader rebuilds usage from each execution's created_at..ended_at: the
    same figure the old leader kept as they started and ended."""
    clock = Clock()
    live, rebuilt = FairShare(HOUR, clock), FairShare(HOUR, clock)
    start = clock.now
    live.began("e1", "alice", CPU)
    clock.now += 600
    live.ended("e1")
    live.began("e2", "alice", Room(cpu=4.0))
    clock.now += 300
    rebuilt.used("alice", CPU, start, start + 600)
    rebuilt.began("e2", "alice", Room(cpu=4.0), since=start + 600)
    assert rebuilt.usage("alice") == pytest.approx(live.usage("alice"))
    assert rebuilt.held("alice") == live.held("alice") == Room(cpu=4.0)


def test_an_execution_counts_once_however_often_it_is_seen() -> None:
    clock = Clock()
    share = FairShare(HOUR, clock)
    share.began("e1", "alice", CPU)
    share.began("e1", "alice", CPU)  # ACCEPTED after OFFERED: the same execution
    assert share.held("alice") == CPU
    share.ended("e1")
    share.ended("e1")
    assert share.held("alice") == Room()
    assert share.rank("alice")[1] == 0.0


def test_weight_counts_memory_and_gpus_as_cpus_and_never_nothing() -> None:
    assert weight(Room(cpu=2.0, memory=8 * 2**30)) == 4.0
    assert weight(Room(gpu=1)) == 8.0
    assert weight(Room()) > 0


def _job(owner: str, priority: int = 50, created: float = 0.0, n: int = 0) -> Job:
    return Job(
        job_id=f"j-{n:016x}",
        spec=JobSpec(image="busybox", priority=priority, resources=ResourceRequest(cpu=1)),
        owner=owner,
        created_at=datetime.fromtimestamp(1_700_000_000 + created, UTC),
    )


def test_queue_order_is_priority_then_least_usage_then_first_submitted() -> None:
    usage = {"alice": 100.0, "bob": 5.0}
    queue = FairQueue(lambda owner: (usage.get(owner, 0.0), 0.0))
    jobs = [
        _job("alice", created=1, n=1),
        _job("alice", created=2, n=2),
        _job("bob", created=3, n=3),
        _job("alice", priority=90, created=4, n=4),
        _job("bob", created=5, n=5),
    ]
    for job in jobs:
        queue.push(job.job_id, Place.of(job))
    order = [queue.pop() for _ in jobs]
    assert order == [jobs[3].job_id, jobs[2].job_id, jobs[4].job_id, jobs[0].job_id, jobs[1].job_id]
    assert queue.pop() is None and not queue


def test_owners_take_turns_as_their_usage_changes_between_picks() -> None:
    usage = {"alice": 0.0, "bob": 1.0}
    queue = FairQueue(lambda owner: (usage[owner], 0.0))
    for n, owner in enumerate(["alice", "alice", "bob", "bob"]):
        job = _job(owner, created=n, n=n)
        queue.push(job.job_id, Place.of(job))
    first = queue.pop()
    usage["alice"] = 2.0  # alice's first job runs: bob now has used less
    assert (first, queue.pop()) == (_job("alice", n=0).job_id, _job("bob", n=2).job_id)


def test_jobs_passed_over_keep_their_place_and_discarded_ones_leave() -> None:
    queue = FairQueue(lambda owner: (0.0, 0.0))
    jobs = [_job("alice", created=n, n=n) for n in range(3)]
    for job in jobs:
        queue.push(job.job_id, Place.of(job))
    busy = {jobs[0].job_id}
    assert queue.pop(busy.__contains__) == jobs[1].job_id
    queue.discard(jobs[2].job_id)
    queue.push(jobs[1].job_id, Place.of(jobs[1]))  # wanted again
    assert [queue.pop(), queue.pop(), queue.pop()] == [jobs[0].job_id, jobs[1].job_id, None]


def test_the_gate_lets_through_what_the_quota_leaves_and_says_why_not() -> None:
    share = FairShare(HOUR, Clock())
    quotas = {"alice": Quota(cpu=8, memory=16 * 2**30)}
    gate = QuotaGate(lambda owner: quotas.get(owner, Quota()), share)
    job = _job("alice")
    share.began("e1", "alice", Room(cpu=6.0))
    assert gate.allows(job, Room(cpu=1.0)) == (2, "")
    gate.charge("alice", Room(cpu=1.0), 2)  # two placements in flight
    assert gate.allows(job, Room(cpu=1.0)) == (0, "quota: alice uses 8 of 8 CPUs")
    gate.discharge("alice", Room(cpu=1.0), 2)
    assert gate.allows(job, Room(cpu=1.0))[0] == 2
    assert gate.allows(job, Room(memory=20 * 2**30))[1] == (
        "quota: one execution asks 20GiB memory, more than alice's quota of 16GiB memory"
    )
    assert gate.allows(_job("bob"), Room(cpu=64.0)) == (UNLIMITED, "")
    assert gate.allows(job, Room(gpu=1))[0] == UNLIMITED  # no GPU limit


def test_a_users_limits_fall_back_to_the_default_one_by_one() -> None:
    default = Quota(cpu=16, queued=100)
    assert Quota(cpu=32).over(default) == Quota(cpu=32, queued=100)
    assert Quota().over(default) == default


def test_setting_a_quota_changes_only_the_limits_named() -> None:
    current = Quota(cpu=8, gpu=1)
    request = QuotaSetRequest(user="alice", memory="32GiB", clear=["gpu"])
    assert _applied(current, request) == Quota(cpu=8, memory=32 * 2**30)


def test_quota_requests_refuse_bad_names_and_amounts() -> None:
    for fields in ({"user": "Alice"}, {"user": "_default"}, {"user": "a", "cpu": -1}):
        with pytest.raises(ValidationError):
            QuotaSetRequest(**fields)
    assert QuotaSetRequest(user="a", cpu="500m").cpu == 0.5
    assert math.isclose(QuotaSetRequest(default=True, cpu=2048).cpu or 0, 2048)


def test_a_job_that_leaves_and_comes_back_every_tick_does_not_grow_the_queue() -> None:
    """Waiting jobs are wanted again at every tick (and leave the waiting queue): its
    memory stays one entry per job, not one per tick."""
    queue = FairQueue(lambda owner: (0.0, 0.0))
    jobs = [_job("alice", created=n, n=n) for n in range(10)]
    for _ in range(100):
        for job in jobs:
            queue.push(job.job_id, Place.of(job))
        for job in jobs:
            queue.discard(job.job_id)
    for job in jobs:
        queue.push(job.job_id, Place.of(job))
    entries = sum(len(heap) for owners in queue._levels.values() for heap in owners.values())
    assert entries == len(jobs)
    assert [queue.pop() for _ in jobs] == [job.job_id for job in jobs]
