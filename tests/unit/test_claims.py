"""The leader's side of follower placement (requester/jobs/assist.py Claims): which jobs
it leaves to the follower that took them, and for how long."""

from __future__ import annotations

from hivectl.core.jobs import Execution, Job, JobSpec, JobState, new_exec_id, new_job_id
from requester.jobs.assist import Claims


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def taken(placer: str = "req-2", **fields: object) -> Job:
    spec = JobSpec(engine="process", command=["true"])
    return Job(job_id=new_job_id(), spec=spec, placer=placer, **fields)  # type: ignore[arg-type]


def test_a_job_another_requester_took_is_left_to_it_for_its_grace_then_taken_over() -> None:
    clock = Clock()
    claims = Claims("req-1", grace=4.0, clock=clock)
    job = taken()
    assert claims.theirs(job)
    clock.now += 3.9
    assert claims.theirs(job)  # still within the grace since first seen
    clock.now += 0.2
    assert not claims.theirs(job)
    assert (claims.left, claims.taken_over) == (1, 1)


def test_the_leaders_own_jobs_and_jobs_with_offers_are_never_theirs() -> None:
    claims = Claims("req-1", grace=4.0, clock=Clock())
    assert not claims.theirs(taken(placer=""))
    assert not claims.theirs(taken(placer="req-1"))  # it took them as a follower
    job = taken()
    offered = Execution(exec_id=new_exec_id(), job_id=job.job_id, node_id="n-1")
    assert not claims.theirs(job.model_copy(update={"executions": [offered]}))
    assert not claims.theirs(taken(state=JobState.QUEUED))  # a leader decided it already
    assert claims.left == 0


def test_jobs_seen_long_ago_are_forgotten() -> None:
    clock = Clock()
    claims = Claims("req-1", grace=1.0, clock=clock)
    for _ in range(100):
        assert claims.theirs(taken())
    clock.now += 5.0
    assert claims.theirs(taken())  # a new one; the hundred placed long since go
    assert len(claims._seen) == 1
