"""One requester of a cluster leads, a silent leader is replaced within its lease, and a
leader that lost the lead cannot write a job the new one has decided for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from hivectl.core.jobs import Job, JobSpec, new_job_id
from hivectl.core.subjects import Subjects
from requester.jobs.fenced import Deposed, FencedJobs
from requester.jobs.records import JobStore
from requester.leadership import Leadership
from requester.store import Store

LEASE = 1.0
BUCKET = Subjects().leases_bucket


class Candidate:
    """A Leadership with its elections and depositions written down."""

    def __init__(self, name: str) -> None:
        self.events: list[tuple[str, object]] = []
        self.elected = asyncio.Event()
        self.deposed = asyncio.Event()
        self.lead = Leadership(
            BUCKET, name, LEASE, on_elected=self._elected, on_deposed=self._deposed
        )

    async def _elected(self, epoch: int) -> None:
        self.events.append(("elected", epoch))
        self.elected.set()

    async def _deposed(self, why: str) -> None:
        self.events.append(("deposed", why))
        self.deposed.set()

    def die(self) -> None:
        """kill -9: it stops renewing, and deletes nothing."""
        assert self.lead._task is not None
        self.lead._task.cancel()


@pytest.fixture
async def pair(nc: Client) -> AsyncIterator[tuple[Candidate, Candidate]]:
    a, b = Candidate("req-a"), Candidate("req-b")
    js = Store(nc, timeout=2.0, deadline=4.0)
    await asyncio.gather(a.lead.start(js), b.lead.start(js))
    yield a, b
    for c in (a, b):
        await c.lead.close()


async def test_exactly_one_of_two_leads(pair: tuple[Candidate, Candidate]) -> None:
    a, b = pair
    await asyncio.sleep(LEASE)  # both renew and look a few times: nothing changes
    assert [a.lead.is_leader, b.lead.is_leader].count(True) == 1
    leader, follower = (a, b) if a.lead.is_leader else (b, a)
    assert follower.lead.leader == leader.lead.name
    assert not follower.events and len(leader.events) == 1


async def test_a_silent_leader_is_replaced_within_its_lease(
    pair: tuple[Candidate, Candidate],
) -> None:
    a, b = pair
    leader, follower = (a, b) if a.lead.is_leader else (b, a)
    old_epoch = leader.lead.epoch
    leader.die()
    died = time.monotonic()
    await asyncio.wait_for(follower.elected.wait(), 3 * LEASE)
    took = time.monotonic() - died
    assert LEASE <= took <= LEASE + 2 * LEASE / 6 + 0.5, took  # a lease, and two looks
    assert follower.lead.epoch > old_epoch
    assert follower.lead.takeovers == 1
    # The old leader could no longer prove its lease a margin before the takeover.
    assert not leader.lead.valid()


async def test_a_deposed_leader_that_wakes_steps_down_at_its_first_renewal(
    pair: tuple[Candidate, Candidate],
) -> None:
    a, b = pair
    leader, follower = (a, b) if a.lead.is_leader else (b, a)
    leader.die()  # frozen: no renewals, but it still thinks it leads
    await asyncio.wait_for(follower.elected.wait(), 3 * LEASE)
    await leader.lead.step()  # it wakes and tries to renew
    assert leader.deposed.is_set() and not leader.lead.is_leader
    assert ("deposed", "another requester holds the lease") in leader.events


async def test_a_clean_stop_hands_the_lead_over_at_once(
    pair: tuple[Candidate, Candidate],
) -> None:
    a, b = pair
    leader, follower = (a, b) if a.lead.is_leader else (b, a)
    await leader.lead.close()
    stopped = time.monotonic()
    await asyncio.wait_for(follower.elected.wait(), 3 * LEASE)
    assert time.monotonic() - stopped < LEASE / 2  # its next look, not a whole lease
    assert follower.lead.takeovers == 0


async def test_an_older_epoch_cannot_write_a_job_a_newer_one_decided(nc: Client) -> None:
    store = JobStore(nc, Subjects(), on_cancel=lambda executions, reason: None)
    await store.start(Store(nc, timeout=2.0, deadline=4.0))
    job_id = new_job_id()
    await store.create(Job(job_id=job_id, spec=JobSpec(engine="process", command=["true"])))
    old, new = FencedJobs(store, 3, lambda: True), FencedJobs(store, 7, lambda: True)

    written = await new.change(job_id, lambda job: job.model_copy(update={"reason": "new"}))
    assert written is not None and written.epoch == 7
    with pytest.raises(Deposed, match="written by epoch 7"):
        await old.change(job_id, lambda job: job.model_copy(update={"reason": "stale"}))
    lapsed = FencedJobs(store, 9, lambda: False)  # its lease could not be proved
    with pytest.raises(Deposed, match="cannot prove its lease"):
        await lapsed.change(job_id, lambda job: job.model_copy(update={"reason": "x"}))
    stored = store.get(job_id)
    assert stored is not None and stored.reason == "new"
    await store.close()


async def test_a_leader_that_stepped_down_unanswered_takes_its_own_lease_back(
    pair: tuple[Candidate, Candidate],
) -> None:
    """The leases stream electing a leader kept renewals unanswered past the margin; once
    it answers, the lease is still the same record: nobody took over, so it is ours."""
    a, b = pair
    leader, follower = (a, b) if a.lead.is_leader else (b, a)
    leader.die()
    old_epoch = leader.lead.epoch
    await leader.lead._step_down("no answer from the leases bucket")
    await leader.lead.step()
    assert leader.lead.is_leader and leader.lead.epoch > old_epoch
    assert leader.lead.takeovers == 0 and not follower.lead.is_leader
