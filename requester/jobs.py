"""Jobs: the `hive_jobs` bucket mirrored in memory, and the operator API over it.

One record per job holds its spec, state and every execution, so one compare-and-set
covers a whole decision (placing, applying an update, stopping). A write that loses a
race re-reads the record and re-applies the change, which is therefore a pure function
of the record. The store also says what every write meant: a job event when the state
moved, and a cancel for each execution that a write took from active to CANCELLED, so
no caller can forget either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import timedelta

from nats.aio.client import Client

from hivectl.core import codec
from hivectl.core.jobs import (
    JOB_TERMINAL,
    ExecState,
    Execution,
    Job,
    JobEvent,
    JobGetReply,
    JobGetRequest,
    JobListReply,
    JobListRequest,
    JobState,
    JobStopRequest,
    JobSubmitReply,
    JobSubmitRequest,
    new_job_id,
)
from hivectl.core.models import Message, OkReply, utcnow
from hivectl.core.subjects import Subjects
from requester.api import REPLY_HEADROOM
from requester.executions import ACTIVE, finish, node_stopped
from requester.kvview import KvView
from requester.routing import ApiRouter, Refusal
from requester.store import Store

log = logging.getLogger("hive.requester.jobs")
# The scheduler and the execution-update consumer both write job records; give their
# races more rounds than the node registry needs.
CAS_ATTEMPTS = 16

Change = Callable[[Job], Job | None]  # None: nothing to change
CancelSink = Callable[[list[Execution], str], None]


class JobError(Refusal):
    """A request about jobs that is refused: `code` for counters and error replies."""


class Deposed(Exception):
    """A newer leader decides for this job now (or our lease cannot be proved): this
    requester must not write it."""


class FencedJobs:
    """The job store as the leader writes it: every change carries the leader's epoch
    and is refused once a newer leader has written the job, or once the lease cannot be
    proved (see leadership.py). Reads pass through."""

    def __init__(self, store: JobStore, epoch: int, valid: Callable[[], bool]) -> None:
        self.store = store
        self.epoch = epoch
        self._valid = valid

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def jobs(self) -> Iterable[Job]:
        return self.store.jobs()

    async def fresh(self, job_id: str) -> Job | None:
        return await self.store.fresh(job_id)

    async def change(self, job_id: str, change: Change) -> Job | None:
        if not self._valid():
            raise Deposed(f"epoch {self.epoch} cannot prove its lease")
        epoch = self.epoch

        def fenced(job: Job) -> Job | None:
            if job.epoch > epoch:
                raise Deposed(f"{job.job_id} was written by epoch {job.epoch}, we are {epoch}")
            after = change(job)
            return None if after is None else after.model_copy(update={"epoch": epoch})

        return await self.store.change(job_id, fenced)


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
            on_set=self._index,
        )
        # node id -> {exec id: job id} of the executions active there, and what each job
        # put in it, so "what runs on node X" costs no scan of every job.
        self._active: dict[str, dict[str, str]] = {}
        self._indexed: dict[str, list[tuple[str, str]]] = {}
        self._job_of: dict[str, str] = {}  # exec id -> job id, every execution kept
        self._execs_of: dict[str, list[str]] = {}
        # Told of every job value taken in (our writes and other requesters'), after
        # the index: the leader places a job another requester stored at once.
        self.watchers: list[Callable[[Job], None]] = []

    async def start(self, js: Store) -> None:
        """Open (or create) the bucket and load every job before serving."""
        await self._view.start(js)

    async def close(self) -> None:
        await self._view.close()

    # -- reads ------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        return self._view.get(job_id)

    def jobs(self) -> Iterable[Job]:
        return self._view.values()

    def __len__(self) -> int:
        return len(self._view)

    @property
    def lost_races(self) -> int:
        """Writes to job records another writer beat (each was applied again after)."""
        return self._view.lost_races

    def follow(self) -> None:
        """Another requester leads: keep its writes packed until someone reads them
        (decoding every placement write cost a follower a tenth of a core, on a
        machine the leader shares). The indexes below serve the leader alone."""
        self._view.lazy = True

    def lead(self) -> None:
        """This requester leads: every job decoded, the indexes rebuilt."""
        self._view.lazy = False
        self._view.decode_all()

    def active_on(self, node_id: str) -> dict[str, str]:
        """{exec id: job id} of the executions active on `node_id`, as stored now."""
        return dict(self._active.get(node_id, {}))

    def job_of(self, exec_id: str) -> str | None:
        """The job an execution belongs to (any state), as stored now."""
        return self._job_of.get(exec_id)

    async def fresh(self, job_id: str) -> Job | None:
        """The job as the bucket has it this moment, not as memory last saw it."""
        return await self._view.reload(job_id)

    def _index(self, job_id: str, job: Job | None) -> None:
        for exec_id in self._execs_of.pop(job_id, ()):
            self._job_of.pop(exec_id, None)
        if job is not None and job.executions:
            self._execs_of[job_id] = [e.exec_id for e in job.executions]
            self._job_of.update(dict.fromkeys(self._execs_of[job_id], job_id))
        for node_id, exec_id in self._indexed.pop(job_id, ()):
            held = self._active.get(node_id)
            if held is not None:
                held.pop(exec_id, None)
                if not held:
                    del self._active[node_id]
        if job is None:
            return
        for watcher in self.watchers:
            watcher(job)
        entries = [(e.node_id, e.exec_id) for e in job.executions if e.state in ACTIVE]
        for node_id, exec_id in entries:
            self._active.setdefault(node_id, {})[exec_id] = job_id
        if entries:
            self._indexed[job_id] = entries

    def resolve(self, prefix: str) -> Job:
        """The one job whose id equals, or else starts with, `prefix`."""
        job = self._view.get(self._view.resolve(prefix))
        if job is None:  # deleted between the two lookups
            raise JobError("not_found", f"job {prefix!r} not found")
        return job

    # -- writes -----------------------------------------------------------------------
    async def create(self, job: Job) -> tuple[Job, bool]:
        """Store a new job: (the job, True); or, when its id is taken, (the job stored
        under it, False). The KV create is a compare-and-set, so two requesters (or one
        submit and its retry) never both create the same id."""
        if not await self._view.create(job.job_id, job):
            stored = self._view.get(job.job_id)
            if stored is None:  # deleted in between: the id is its own again
                raise JobError("conflict", f"job {job.job_id} changed meanwhile; submit again")
            return stored, False
        await self._publish_event(JobEvent(job_id=job.job_id, new=job.state, reason="submitted"))
        return job, True

    async def change(self, job_id: str, change: Change) -> Job | None:
        """Apply `change` by compare-and-set, retrying lost races; the job as stored after.

        None when the job does not exist. A change that returns None writes nothing.
        """

        def apply(job: Job) -> Job | None:
            after = change(job)
            return None if after is None else after.model_copy(update={"updated_at": utcnow()})

        changed = await self._view.change(job_id, apply)
        if changed is None:
            return None
        before, after = changed
        if after is not before:
            await self._after_write(before, after)
        return after

    async def expire(self, retention: float) -> int:
        """Delete the finished jobs that ended over `retention` seconds ago; how many.

        A finished job never changes again, so its last update is when it ended.
        """
        if retention <= 0:
            return 0
        cutoff = utcnow() - timedelta(seconds=retention)
        old = [j.job_id for j in self.jobs() if j.state in JOB_TERMINAL and j.updated_at < cutoff]
        for job_id in old:
            await self._view.purge(job_id)
        if old:
            log.info("deleted %d jobs that finished over %gs ago", len(old), retention)
        return len(old)

    async def _after_write(self, before: Job, after: Job) -> None:
        if before.state != after.state:
            event = JobEvent(job_id=after.job_id, old=before.state, new=after.state)
            await self._publish_event(event.model_copy(update={"reason": after.reason}))
        was_active = {e.exec_id for e in before.executions if e.state in ACTIVE}
        cancelled = [
            e
            for e in after.executions
            if e.exec_id in was_active and e.state is ExecState.CANCELLED and not node_stopped(e)
        ]
        if cancelled:
            self._on_cancel(cancelled, after.reason or f"job {after.state.lower()}")

    async def _publish_event(self, event: JobEvent) -> None:
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


Kick = Callable[[str], None]


class JobApi(ApiRouter):
    noun = "job"

    """`hive.api.job.{submit,list,get,stop}`: reads from memory, writes through the store."""

    def __init__(
        self, store: JobStore, *, kick: Kick, max_payload: int, limits: codec.Limits
    ) -> None:
        self._store = store
        self._kick = kick
        self._max_reply = max_payload - REPLY_HEADROOM
        self._limits = limits
        super().__init__()
        self.handlers.update(
            submit=self.submit, list=self.list_jobs, get=self.get_job, stop=self.stop_job
        )

    async def submit(self, data: bytes) -> Message:
        """Create the job; a repeat of a submit (same id, same spec) gets the same job.

        Clients pick the id, so a submit whose reply was lost can be sent again without
        a second job; the same id with another spec is refused. `decode` validates the
        whole spec: a bad one is an "invalid" reply naming the field.
        """
        request = codec.decode(data, JobSubmitRequest, self._limits)
        job_id = request.job_id or new_job_id()
        known = self._store.get(job_id)  # a retry usually finds it here, with no write
        if known is None:
            known, created = await self._store.create(Job(job_id=job_id, spec=request.spec))
            if created:
                self._kick(job_id)
                return JobSubmitReply(job_id=job_id)
        if not known.spec.same_as(request.spec):
            raise JobError(
                "exists",
                f"job {job_id} exists with another spec: submit this one with another id (or none)",
            )
        return JobSubmitReply(job_id=job_id)

    async def list_jobs(self, data: bytes) -> Message:
        request = codec.decode(data, JobListRequest, self._limits)
        jobs = sorted(
            (j for j in self._store.jobs() if request.state is None or j.state == request.state),
            key=_newest_first,
        )
        if request.after:
            after = self._store.get(request.after)
            if after is None:
                raise JobError("not_found", f"job {request.after!r} (list position) not found")
            mark = _newest_first(after)
            jobs = [j for j in jobs if _newest_first(j) > mark]
        return self._page(jobs[: request.limit + 1], request.limit)

    def _page(self, jobs: list[Job], limit: int) -> JobListReply:
        """The first `limit` jobs, fewer if they would not fit in one message."""
        while True:
            page = jobs[:limit]
            more = len(jobs) > len(page)
            reply = JobListReply(jobs=page, next=page[-1].job_id if more and page else "")
            if len(codec.encode(reply)) <= self._max_reply or limit == 1:
                return reply
            limit = max(1, limit // 2)

    async def get_job(self, data: bytes) -> Message:
        request = codec.decode(data, JobGetRequest, self._limits)
        return JobGetReply(job=self._store.resolve(request.id))

    async def stop_job(self, data: bytes) -> Message:
        request = codec.decode(data, JobStopRequest, self._limits)
        job = self._store.resolve(request.id)
        reason = request.reason or "stopped by an operator"
        # A terminal job is left as it is: stopping it again is not an error.
        await self._store.change(
            job.job_id,
            lambda j: None if j.state in JOB_TERMINAL else finish(j, JobState.STOPPED, reason),
        )
        return OkReply(id=job.job_id)


def _newest_first(job: Job) -> tuple[float, str]:
    return (-job.created_at.timestamp(), job.job_id)
