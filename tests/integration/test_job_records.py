"""How jobs are stored: a job's record does not grow with its count, a change to one
execution rewrites no other, another requester sees the job whole, and records from
before executions had keys of their own are moved out when a requester starts."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.jobs import ExecState, Execution, Job, JobSpec, new_exec_id, new_job_id
from hivectl.core.subjects import Subjects
from requester.jobs.fenced import Deposed, FencedJobs
from requester.jobs.records import JobStore, exec_key
from requester.store import Store

S = Subjects()
COUNT = 2000


@pytest.fixture
async def store(nc: Client) -> AsyncIterator[JobStore]:
    jobs = JobStore(nc, S, on_cancel=lambda executions, reason: None)
    await jobs.start(Store(nc, timeout=5.0, deadline=10.0))
    yield jobs
    await jobs.close()


def _spec(count: int = COUNT) -> JobSpec:
    return JobSpec(engine="process", command=["true"], count=count)


def _offered(job: Job, n: int) -> Job:
    new = [Execution(exec_id=new_exec_id(), job_id=job.job_id, node_id="node-1") for _ in range(n)]
    return job.model_copy(update={"executions": [*job.executions, *new]})


def _moved(job: Job, exec_id: str, state: ExecState) -> Job:
    executions = [e.model_copy(update={"state": state}) if e.exec_id == exec_id else e
                  for e in job.executions]  # fmt: skip
    return job.model_copy(update={"executions": executions})


async def _revisions(nc: Client, job_id: str, exec_ids: list[str]) -> dict[str, int]:
    kv = await nc.jetstream().key_value(S.execs_bucket)
    return {x: (await kv.get(exec_key(job_id, x))).revision or 0 for x in exec_ids}


async def test_a_big_job_is_a_small_record_and_one_change_writes_one_execution(
    nc: Client, store: JobStore
) -> None:
    job_id = new_job_id()
    await store.create(Job(job_id=job_id, spec=_spec()))
    job = await store.change(job_id, lambda j: _offered(j, COUNT))
    assert job is not None and len(job.executions) == COUNT

    record = await (await nc.jetstream().key_value(S.jobs_bucket)).get(job_id)
    assert record.value is not None and len(record.value) < 1024  # spec and state, no executions
    ids = [e.exec_id for e in job.executions]
    assert ids == sorted(ids)  # in the order they were made
    before = await _revisions(nc, job_id, ids)

    after = await store.change(job_id, lambda j: _moved(j, ids[7], ExecState.RUNNING))
    assert after is not None and after.executions[7].state is ExecState.RUNNING
    now = await _revisions(nc, job_id, ids)
    assert [x for x in ids if now[x] != before[x]] == [ids[7]]


async def test_another_requester_sees_the_job_whole(nc: Client, store: JobStore) -> None:
    job_id = new_job_id()
    await store.create(Job(job_id=job_id, spec=_spec(50)))
    job = await store.change(job_id, lambda j: _offered(j, 50))
    assert job is not None
    other = JobStore(nc, S, on_cancel=lambda executions, reason: None)
    await other.start(Store(nc, timeout=5.0, deadline=10.0))
    try:
        seen = other.get(job_id)
        assert seen is not None and [e.exec_id for e in seen.executions] == [
            e.exec_id for e in job.executions
        ]
        fresh = await other.fresh_exec(job_id, job.executions[3].exec_id)
        assert fresh == job.executions[3]
    finally:
        await other.close()


async def test_an_older_leader_cannot_write_an_execution_a_newer_one_wrote(
    store: JobStore,
) -> None:
    job_id = new_job_id()
    await store.create(Job(job_id=job_id, spec=_spec(2)))
    await store.change(job_id, lambda j: _offered(j, 2))
    new, old = FencedJobs(store, 7, lambda: True), FencedJobs(store, 3, lambda: True)
    job = store.get(job_id)
    assert job is not None
    first = job.executions[0].exec_id
    await new.change(job_id, lambda j: _moved(j, first, ExecState.ACCEPTED))
    with pytest.raises(Deposed, match="written by epoch 7"):
        await old.change(job_id, lambda j: _moved(j, first, ExecState.REJECTED))
    stored = store.execution(job_id, first)
    assert stored is not None and stored.state is ExecState.ACCEPTED and stored.epoch == 7


async def test_a_record_holding_its_executions_is_moved_out_at_start(nc: Client) -> None:
    """Jobs stored by an earlier Hive keep their executions inside the job record."""
    job_id = new_job_id()
    nested = _offered(Job(job_id=job_id, spec=_spec(3)), 3)
    js = Store(nc, timeout=5.0, deadline=10.0)
    first = JobStore(nc, S, on_cancel=lambda executions, reason: None)
    await first.start(js)  # creates the buckets
    await first.close()
    kv = await nc.jetstream().key_value(S.jobs_bucket)
    await kv.put(job_id, codec.pack_model(nested))

    store = JobStore(nc, S, on_cancel=lambda executions, reason: None)
    await store.start(js)
    try:
        job = store.get(job_id)
        assert job is not None and [e.exec_id for e in job.executions] == [
            e.exec_id for e in nested.executions
        ]
        record = codec.unpack_model((await kv.get(job_id)).value or b"", Job)
        assert record.executions == []
        ids = [e.exec_id for e in nested.executions]
        assert set(await _revisions(nc, job_id, ids)) == set(ids)
    finally:
        await store.close()


async def test_concurrent_changes_of_one_job_are_all_seen(nc: Client, store: JobStore) -> None:
    """The scheduler and the update consumer change the same job at once: what each
    wrote must be in the job as read after, not just the last writer's picture."""
    job_id = new_job_id()
    await store.create(Job(job_id=job_id, spec=_spec(40)))
    job = await store.change(job_id, lambda j: _offered(j, 40))
    assert job is not None
    ids = [e.exec_id for e in job.executions]
    await asyncio.gather(
        *(store.change(job_id, functools.partial(_moved, exec_id=x, state=ExecState.RUNNING))
          for x in ids)
    )  # fmt: skip
    seen = store.get(job_id)
    assert seen is not None and {e.state for e in seen.executions} == {ExecState.RUNNING}
    other = JobStore(store._nc, S, on_cancel=lambda executions, reason: None)
    await other.start(Store(store._nc, timeout=5.0, deadline=10.0))
    try:
        assert other.get(job_id) == seen
    finally:
        await other.close()
