"""Following many jobs to their end at the cost of one subscription and a get per job.

The requester publishes a JobEvent on `<prefix>.events.job.<id>` for every change of a
job's state. A tracker subscribes once to every job's events (`events.job.*`), then
asks for each job it follows (its state now: events from before the subscription are
not seen again), and from then on acts on events alone: a state change is passed on as
it comes, and a job the event says has ended is asked for once more, for its final
record. Thousands of jobs cost one get each at the start and one at the end, never a
poll per job.

Events are not stored for the tracker (it is a plain subscription), so one could be
missed: a requester that died between writing a job and publishing its event. Against
that, the jobs not yet finished are asked for again every SWEEP_INTERVAL seconds.
A user's client (signed requests) may not read events at all: it asks every
USER_POLL_INTERVAL seconds instead, or less often for many jobs (USER_POLL_RATE).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from functools import partial
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from hivectl.core import codec
from hivectl.core.jobs import JOB_TERMINAL, Job, JobEvent, JobState

if TYPE_CHECKING:
    from hivectl.core.client import AsyncClient

SWEEP_INTERVAL = 30.0  # seconds between asking again for every job not finished
# A get right after a job's final event may be answered by a requester that has not
# seen the change yet (several requesters, each with its own view): asked again after
# this long, until it has.
LAG_RETRY = 0.2
USER_POLL_INTERVAL = 0.5
USER_POLL_RATE = 200.0
Change = tuple[str, JobState]


class JobTracker:
    """Follows the jobs `job_ids` (full ids, or unique prefixes) until all have ended."""

    def __init__(self, client: AsyncClient, job_ids: Iterable[str]) -> None:
        self._client = client
        self._given = list(dict.fromkeys(job_ids))
        self._names: dict[str, str] = {}  # full id -> the id as given
        self._states: dict[str, JobState] = {}  # full id -> last state passed on
        self._final: dict[str, Job] = {}  # full id -> its record once ended
        self._ended: set[str] = set()  # ended by an event, final record not read yet
        self._events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._sweep = USER_POLL_INTERVAL if client.signed else SWEEP_INTERVAL

    def done(self) -> dict[str, Job]:
        """The jobs that ended, by the ids given, in the order given."""
        by_given = {self._names[full]: job for full, job in self._final.items()}
        return {given: by_given[given] for given in self._given if given in by_given}

    def pending(self) -> list[str]:
        """The ids (as given) of the jobs not known to have ended."""
        finished = {self._names[full] for full in self._final}
        return [given for given in self._given if given not in finished]

    async def changes(self) -> AsyncGenerator[Change]:
        """(id as given, state) for each job now, then for each change, until every
        job has ended. Raises NotFound for an id no job has."""
        nc = self._client.nc
        sub = None
        if not self._client.signed:
            sub = await nc.subscribe(self._client.subjects.job_events("*"), cb=self._on_event)
        try:
            await nc.flush()  # subscribed before the first get: no change falls between
            jobs = await self._get_all(self._given)
            for given, job in zip(self._given, jobs, strict=True):
                self._names[job.job_id] = given
            for job in jobs:
                for change in self._note(job):
                    yield change
            async for change in self._follow():
                yield change
        finally:
            if sub is not None:
                with contextlib.suppress(NatsError, OSError):
                    await sub.unsubscribe()

    async def _follow(self) -> AsyncIterator[Change]:
        sweep_at = time.monotonic() + self._sweep
        while len(self._final) < len(self._names):
            wait = LAG_RETRY if self._ended else max(0.0, sweep_at - time.monotonic())
            events = await self._next_events(wait)
            for event in events:
                for change in self._from_event(event):
                    yield change
            if events or self._ended:
                asked = sorted(self._ended)  # final records of what events said ended
            else:  # the sweep: ask for every job left
                asked = [full for full in self._names if full not in self._final]
                # A user's polling asks at most USER_POLL_RATE gets a second.
                spread = len(asked) / USER_POLL_RATE if self._client.signed else 0.0
                sweep_at = time.monotonic() + max(self._sweep, spread)
            for job in await self._get_all(asked):
                for change in self._note(job):
                    yield change

    async def _next_events(self, timeout: float) -> list[JobEvent]:
        """Every event waiting, after waiting up to `timeout` for the first."""
        events: list[JobEvent] = []
        with contextlib.suppress(TimeoutError):
            events.append(await asyncio.wait_for(self._events.get(), timeout))
        while not self._events.empty():
            events.append(self._events.get_nowait())
        return events

    def _from_event(self, event: JobEvent) -> list[Change]:
        full = event.job_id
        if full not in self._names or full in self._final:
            return []
        try:
            state = JobState(event.new)
        except ValueError:
            return []
        if state in JOB_TERMINAL:
            self._ended.add(full)  # its final record is read next
        if self._states.get(full) == state:
            return []
        self._states[full] = state
        return [(self._names[full], state)]

    def _note(self, job: Job) -> list[Change]:
        """Record `job` as read: ended jobs are final; a change of state is passed on."""
        full = job.job_id
        if job.state in JOB_TERMINAL:
            self._final[full] = job
            self._ended.discard(full)
        if self._states.get(full) == job.state or (
            self._states.get(full) in JOB_TERMINAL and job.state not in JOB_TERMINAL
        ):
            return []  # the same, or older than an event already passed on
        self._states[full] = job.state
        return [(self._names[full], job.state)]

    async def _get_all(self, ids: list[str]) -> list[Job]:
        return await self._client.bounded([partial(self._client.get, i) for i in ids])

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = codec.decode(msg.data, JobEvent)
        except codec.CodecError:
            return  # not an event this tracker can read: the sweep covers what it meant
        self._events.put_nowait(event)
