"""Jobs: the `hive_jobs` and `hive_execs` buckets mirrored in memory, changed by CAS.

A job is stored as one record (spec, state, reason) and one record per execution
(`<job id>.<exec id>`), so a batch of 10,000 is 10,001 small records: a job's record
does not grow with its count, and a change to one execution rewrites no other. The
rules that decide (executions.py, offers.py, the scheduler) still see a job whole: a
`Job` with its executions, composed here from the two buckets and cached until one of
its records changes. A change is a pure function of that whole job; the store writes
what it changed (each record by compare-and-set on its own revision, executions first,
the job record last) and, when another writer got to one of those records first,
reads it again and re-applies the change, which then writes only what is still left.
The store also says what every write meant: a job event when the state moved, and a
cancel for each execution that a write took from active to CANCELLED.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.jobs import JOB_TERMINAL, ExecState, Execution, Job, JobEvent
from hivectl.core.models import utcnow
from hivectl.core.subjects import Subjects
from hivectl.core.usage import UsageRecord
from requester.events import stamped
from requester.jobs.executions import ACTIVE, node_stopped
from requester.jobs.fairshare import Owners
from requester.jobs.fenced import Change, Deposed, JobError
from requester.kvview import KvView
from requester.store import Store
from requester.usage.records import usage_records

log = logging.getLogger("hive.requester.jobs")
# The scheduler and the execution-update consumer both write job records; give their
# races more rounds than the node registry needs.
CAS_ATTEMPTS = 16
WRITES_AT_ONCE = 512  # record writes of one change in flight together

CancelSink = Callable[[list[Execution], str], None]


@dataclass(slots=True, eq=False)
class _Writing:
    """One change's writes in flight: the records it writes, and whether another of
    the job's records changed meanwhile."""

    keys: set[str]
    disturbed: bool = False


def exec_key(job_id: str, exec_id: str) -> str:
    return f"{job_id}.{exec_id}"


def _bare(job: Job) -> Job:
    """The job's own record: what `hive_jobs` stores of it."""
    return job.model_copy(update={"executions": [], "counts": {}, "nodes": []})


class JobStore:
    def __init__(self, nc: Client, subjects: Subjects, on_cancel: CancelSink) -> None:
        self._nc = nc
        self._subjects = subjects
        self._on_cancel = on_cancel
        self._view: KvView[Job] = KvView(
            subjects.jobs_bucket,
            Job,
            noun="job",
            error=JobError,
            attempts=CAS_ATTEMPTS,
            on_set=self._job_taken_in,
            on_key=self._composed_stale,
        )
        self._execs: KvView[Execution] = KvView(
            subjects.execs_bucket,
            Execution,
            noun="execution",
            error=JobError,
            on_set=self._exec_taken_in,
            on_key=self._exec_key_changed,
        )
        # job id -> {exec id: its key}, in creation order: exec ids sort by creation, and
        # a job whose keys came out of order (a reload, the initial load) is sorted when
        # next composed.
        self._members: dict[str, dict[str, str]] = {}
        self._unsorted: set[str] = set()
        self._job_of: dict[str, str] = {}  # exec id -> job id, every execution kept
        self._composed: dict[str, Job] = {}  # job id -> the job whole, until a record changes
        self._writing: dict[str, list[_Writing]] = {}  # job id -> its writes in flight
        # node id -> {exec id: job id} of the executions active there, and exec id -> its
        # node while active, so "what runs on node X" costs no scan of every job.
        self._active: dict[str, dict[str, str]] = {}
        self._active_at: dict[str, str] = {}
        # Told of every job record taken in (our writes and other requesters'): the
        # leader places a job another requester stored at once.
        self.watchers: list[Callable[[Job], None]] = []
        # Told of the usage record of every execution a write of ours ended.
        self.usage: Callable[[list[UsageRecord]], None] | None = None
        self.owners = Owners()  # owners' waiting jobs and, on the leader, their usage
        # Keep every execution decoded and indexed when following too: a follower that
        # places jobs (assist.py) counts room from them as the leader does.
        self.indexed = False

    async def start(self, js: Store) -> None:
        """Open (or create) the buckets and load every job before serving."""
        await self._execs.start(js)
        await self._view.start(js)
        await self._unnest()

    async def close(self) -> None:
        await self._view.close()
        await self._execs.close()

    # -- reads ------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """The job with its executions (composed once, then cached until it changes)."""
        job = self._composed.get(job_id)
        if job is not None:
            return job
        record = self._view.get(job_id)
        if record is None:
            return None
        if job_id in self._unsorted:
            self._unsorted.discard(job_id)
            self._members[job_id] = dict(sorted(self._members[job_id].items()))
        keys = self._members.get(job_id, {})
        executions = [e for key in keys.values() if (e := self._execs.get(key)) is not None]
        job = record.model_copy(update={"executions": executions})
        self._composed[job_id] = job
        return job

    def record(self, job_id: str) -> Job | None:
        """The job's own record, without its executions (cheap: nothing composed)."""
        return self._view.get(job_id)

    def execution(self, job_id: str, exec_id: str) -> Execution | None:
        """One execution, from memory (nothing composed)."""
        return self._execs.get(exec_key(job_id, exec_id))

    def records(self) -> list[Job]:
        return self._view.values()

    def jobs(self) -> Iterable[Job]:
        """Every job whole: composes what is not cached; prefer `records`/`unfinished`."""
        return [job for key in list(self._view.keys()) if (job := self.get(key)) is not None]

    def unfinished(self) -> list[Job]:
        return [
            job
            for record in self.records()
            if record.state not in JOB_TERMINAL and (job := self.get(record.job_id)) is not None
        ]

    def executions(self) -> list[Execution]:
        """Every execution kept (not on a hot path: a new leader's one look)."""
        return self._execs.values()

    def execution_states(self) -> Counter[ExecState]:
        """Every execution kept, by state (a metrics scrape: not on a hot path)."""
        return Counter(e.state for e in self._execs.values())

    def __len__(self) -> int:
        return len(self._view)

    @property
    def lost_races(self) -> int:
        """Writes to job or execution records another writer beat (each applied again)."""
        return self._view.lost_races + self._execs.lost_races

    def follow(self) -> None:
        """Another requester leads. Job records (a few writes a job, whatever its count)
        stay decoded: a submit to any requester checks its owner's count of waiting
        jobs. Execution records stay decoded and indexed only with `indexed` (a follower
        that places jobs counts room from them); otherwise they are kept packed until
        someone reads them (decoding every placement write cost a follower a tenth of a
        core, on a machine the leader shares)."""
        self._execs.lazy = not self.indexed

    def lead(self) -> None:
        """This requester leads: every record decoded, the indexes (owners' usage
        among them) rebuilt from every record kept."""
        self._view.lazy = self._execs.lazy = False
        self._active.clear()
        self._active_at.clear()
        self.owners.reset_share()
        self.owners.rebuilding = True
        try:
            self._execs.decode_all()
        finally:
            self.owners.rebuilding = False
        self._view.decode_all()

    def active_on(self, node_id: str) -> dict[str, str]:
        """{exec id: job id} of the executions active on `node_id`, as stored now."""
        return dict(self._active.get(node_id, {}))

    def active_nodes(self) -> list[str]:
        """Nodes that hold active executions, as stored now."""
        return list(self._active)

    def job_of(self, exec_id: str) -> str | None:
        """The job an execution belongs to (any state), as stored now."""
        return self._job_of.get(exec_id)

    async def fresh(self, job_id: str) -> Job | None:
        """The job as the bucket has it this moment, not as memory last saw it."""
        await self._view.reload(job_id)
        return self.get(job_id)

    async def fresh_exec(self, job_id: str, exec_id: str) -> Execution | None:
        """One execution as the bucket has it this moment."""
        return await self._execs.reload(exec_key(job_id, exec_id))

    def resolve(self, prefix: str, owner: str | None = None) -> Job:
        """The one job whose id equals, or else starts with, `prefix`; with `owner`, a
        prefix matches that owner's jobs only (an exact id still finds any job)."""

        def owned(job_id: str) -> bool:
            record = self.record(job_id)
            return record is not None and record.owner == owner

        job = self.get(self._view.resolve(prefix, None if owner is None else owned))
        if job is None:  # deleted between the two lookups
            raise JobError("not_found", f"job {prefix!r} not found")
        return job

    # -- what memory takes in ----------------------------------------------------------
    def _composed_stale(self, job_id: str) -> None:
        self._touched(job_id, job_id)

    def _touched(self, job_id: str, key: str) -> None:
        """A record of the job changed in memory: its composed job is stale, and so is
        what a write in flight for the job would compose, unless the record is one it
        writes."""
        self._composed.pop(job_id, None)
        for writing in self._writing.get(job_id, ()):
            if key not in writing.keys:
                writing.disturbed = True

    def _exec_key_changed(self, key: str) -> None:
        job_id, _, exec_id = key.partition(".")
        self._touched(job_id, key)
        members = self._members.setdefault(job_id, {})
        if self._execs.revision(key) is not None:
            if exec_id not in members:
                if members and exec_id < next(reversed(members)):
                    self._unsorted.add(job_id)
                members[exec_id] = key
                self._job_of[exec_id] = job_id
            return
        members.pop(exec_id, None)
        self._job_of.pop(exec_id, None)
        if not members:
            del self._members[job_id]
            self._unsorted.discard(job_id)

    def _job_taken_in(self, job_id: str, job: Job | None) -> None:
        self.owners.job(job_id, job)
        if job is not None:
            for watcher in self.watchers:
                watcher(job)

    def _exec_taken_in(self, key: str, execution: Execution | None) -> None:
        job_id, _, exec_id = key.partition(".")
        node_id = self._active_at.pop(exec_id, None)
        if node_id is not None:
            held = self._active[node_id]
            held.pop(exec_id, None)
            if not held:
                del self._active[node_id]
        if execution is not None and execution.state in ACTIVE:
            self._active.setdefault(execution.node_id, {})[exec_id] = job_id
            self._active_at[exec_id] = execution.node_id
        self.owners.execution(job_id, exec_id, execution, self._view.get)

    # -- writes -----------------------------------------------------------------------
    async def create(self, job: Job) -> tuple[Job, bool]:
        """Store a new job: (the job, True); or, when its id is taken, (the job stored
        under it, False). The KV create is a compare-and-set, so two requesters (or one
        submit and its retry) never both create the same id."""
        if not await self._view.put(job.job_id, _bare(job), None):
            stored = self.get(job.job_id)
            if stored is None:  # deleted in between: the id is its own again
                raise JobError("conflict", f"job {job.job_id} changed meanwhile; submit again")
            return stored, False
        await self._publish_event(JobEvent(job_id=job.job_id, new=job.state, reason="submitted"))
        return job, True

    async def change(self, job_id: str, change: Change, *, epoch: int | None = None) -> Job | None:
        """Apply `change` to the whole job, writing what it changed; the job after.

        None when the job does not exist. A change that returns None writes nothing.
        With `epoch` (the leader's), a record a newer leader wrote is not written
        (Deposed), and every record written carries `epoch`.
        """
        for _ in range(CAS_ATTEMPTS):
            before = self.get(job_id)
            if before is None:
                return None
            after = change(before)
            if after is None:
                return before
            if await self._write(before, after, epoch):
                written = self.get(job_id) or after
                await self._after_write(before, written)
                return written
        raise JobError("conflict", f"job {job_id!r} kept changing; try again")

    async def _write(self, before: Job, after: Job, epoch: int | None) -> bool:
        """Write the records `after` changes from `before`; False when a race was lost
        (memory then holds what won, and the change must be decided again).

        What was written becomes the composed job at once, unless another of the job's
        records changed meanwhile (then the next read composes it from memory): a big
        job is otherwise composed again after each of its changes.
        """
        if epoch is not None and before.epoch > epoch:
            raise Deposed(f"{before.job_id} was written by epoch {before.epoch}, we are {epoch}")
        job_id = before.job_id
        puts, drops, executions = self._exec_writes(before, after, epoch)
        record = _bare(after)
        changed = record != _bare(before)
        keys = {key for key, _, _ in puts} | set(drops) | ({job_id} if changed else set())
        writing = _Writing(keys)
        self._writing.setdefault(job_id, []).append(writing)
        try:
            stored = await self._write_records(
                job_id, puts, drops, record if changed else None, epoch
            )
        finally:
            self._done_writing(job_id, writing)
        if stored is None:
            return False
        if not writing.disturbed:
            base = stored if changed else after
            self._composed[job_id] = base.model_copy(update={"executions": executions})
        return True

    async def _write_records(
        self,
        job_id: str,
        puts: list[tuple[str, Execution, int | None]],
        drops: list[str],
        record: Job | None,
        epoch: int | None,
    ) -> Job | None:
        """The executions, then the job's own record (when given); the record as stored
        (or as it was), or None when a race was lost.

        A job that ends is written the other way round: cut short after its record, an
        ended job's executions run out on their nodes; cut short after its executions
        (CANCELLED), a job still unfinished would be placed again.
        """
        ends = record is not None and record.state in JOB_TERMINAL
        stored = await self._put_record(job_id, record, epoch) if ends else None
        if ends and stored is None:
            return None
        for start in range(0, len(puts), WRITES_AT_ONCE):
            batch = puts[start : start + WRITES_AT_ONCE]
            done = await asyncio.gather(*(self._execs.put(k, e, last) for k, e, last in batch))
            if not all(done):
                return None
        for key in drops:
            await self._execs.purge(key)
        if ends:
            return stored
        return await self._put_record(job_id, record, epoch)

    async def _put_record(self, job_id: str, record: Job | None, epoch: int | None) -> Job | None:
        """`record` stamped and written by CAS (None: the stored one, unchanged)."""
        current = self._view.get(job_id)
        if record is None or current is None:  # unchanged, or deleted meanwhile
            return current
        stamp = {"updated_at": utcnow()} | ({} if epoch is None else {"epoch": epoch})
        record = record.model_copy(update=stamp)
        revision = self._view.revision(job_id)
        if revision is None or not await self._view.put(job_id, record, revision):
            return None
        return record

    def _done_writing(self, job_id: str, writing: _Writing) -> None:
        writers = self._writing[job_id]
        writers.remove(writing)
        if not writers:
            del self._writing[job_id]

    def _exec_writes(
        self, before: Job, after: Job, epoch: int | None
    ) -> tuple[list[tuple[str, Execution, int | None]], list[str], list[Execution]]:
        """(key, execution, revision to replace or None) of each new or changed
        execution, the keys of those `after` dropped, and `after`'s executions as
        they are written (with `epoch`)."""
        old = {e.exec_id: e for e in before.executions}
        puts: list[tuple[str, Execution, int | None]] = []
        executions: list[Execution] = []
        for execution in after.executions:
            prior = old.pop(execution.exec_id, None)
            if prior is not execution and prior != execution:
                if epoch is not None:
                    if prior is not None and prior.epoch > epoch:
                        raise Deposed(f"{execution.exec_id} was written by epoch {prior.epoch}")
                    execution = execution.model_copy(update={"epoch": epoch})
                key = exec_key(before.job_id, execution.exec_id)
                puts.append((key, execution, None if prior is None else self._execs.revision(key)))
            executions.append(execution)
        return puts, [exec_key(before.job_id, exec_id) for exec_id in old], executions

    async def expire(self, retention: float) -> int:
        """Delete the finished jobs that ended over `retention` seconds ago; how many.

        A finished job's record never changes again, so its last update is when it ended.
        """
        if retention <= 0:
            return 0
        cutoff = utcnow() - timedelta(seconds=retention)
        old = [
            j.job_id for j in self.records() if j.state in JOB_TERMINAL and j.updated_at < cutoff
        ]
        for job_id in old:
            keys = list(self._members.get(job_id, {}).values())
            for start in range(0, len(keys), WRITES_AT_ONCE):
                await asyncio.gather(*map(self._execs.purge, keys[start : start + WRITES_AT_ONCE]))
            await self._view.purge(job_id)
        if old:
            log.info("deleted %d jobs that finished over %gs ago", len(old), retention)
        return len(old)

    async def _unnest(self) -> None:
        """Records written before executions had their own keys carry them inside: move
        them out (each execution created, then the record rewritten without them)."""
        for record in self.records():
            if not record.executions:
                continue
            for execution in record.executions:
                await self._execs.put(exec_key(record.job_id, execution.exec_id), execution, None)
            revision = self._view.revision(record.job_id)
            if revision is not None:
                await self._view.put(record.job_id, _bare(record), revision)
            log.info("moved %d executions of %s to their own records", len(record.executions),
                     record.job_id)  # fmt: skip

    async def _after_write(self, before: Job, after: Job) -> None:
        if before.state != after.state:
            event = JobEvent(job_id=after.job_id, old=before.state, new=after.state)
            await self._publish_event(event.model_copy(update={"reason": after.reason}))
        was_active = {e.exec_id for e in before.executions if e.state in ACTIVE}
        ended = (
            [e for e in after.executions if e.exec_id in was_active and e.state not in ACTIVE]
            if was_active
            else []
        )
        if ended and self.usage is not None:
            self.usage(usage_records(after, ended))
        cancelled = [e for e in ended if e.state is ExecState.CANCELLED and not node_stopped(e)]
        if cancelled:
            self._on_cancel(cancelled, after.reason or f"job {after.state.lower()}")

    async def _publish_event(self, event: JobEvent) -> None:
        event = stamped(event)
        log.info(
            "job %s: %s -> %s %s",
            event.job_id,
            event.old or "-",
            event.new,
            event.reason,
            extra={"job_id": event.job_id},
        )
        try:
            await self._nc.publish(self._subjects.job_events(event.job_id), codec.encode(event))
        except Exception as exc:  # an event lost to a closing connection is no reason to fail
            log.debug("job event not published: %s", exc)
