"""Jobs: the `hive_jobs` bucket mirrored in memory, and the operator API over it.

One record per job holds its spec, state and every execution, so one compare-and-set
covers a whole decision (placing, applying an update, stopping). A write that loses a
race re-reads the record and re-applies the change, which is therefore a pure function
of the record. The store also says what every write meant: a job event when the state
moved, and a cancel for each execution that a write took from active to CANCELLED, so
no caller can forget either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

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
from requester.executions import ACTIVE, finish
from requester.routing import ApiRouter, Refusal

log = logging.getLogger("hive.requester.jobs")
CAS_ATTEMPTS = 16
_DELETE_OPS = ("DEL", "PURGE")

Change = Callable[[Job], Job | None]  # None: nothing to change
CancelSink = Callable[[list[Execution], str], None]


class JobError(Refusal):
    """A request about jobs that is refused: `code` for counters and error replies."""


@dataclass(slots=True)
class Entry:
    job: Job
    revision: int


class JobStore:
    def __init__(self, nc: Client, subjects: Subjects, on_cancel: CancelSink) -> None:
        self._nc = nc
        self._subjects = subjects
        self._on_cancel = on_cancel
        self._entries: dict[str, Entry] = {}
        self._kv: KeyValue | None = None
        self._watch_task: asyncio.Task[None] | None = None

    async def start(self, js: JetStreamContext) -> None:
        """Open (or create) the bucket and load every job before serving."""
        bucket = self._subjects.jobs_bucket
        try:
            self._kv = await js.key_value(bucket)
        except BucketNotFoundError:
            config = KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE)
            self._kv = await js.create_key_value(config=config)
        watcher = await self._kv.watchall()
        while (entry := await watcher.updates(timeout=30)) is not None:  # type: ignore[no-untyped-call]
            self._apply(entry)
        self._watch_task = asyncio.create_task(self._follow(watcher), name="jobs-watch")
        log.info("loaded %d jobs from %s", len(self._entries), bucket)

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        """Take a bucket change into memory, unless memory already has it (our own write)."""
        known = self._entries.get(entry.key)
        revision = entry.revision or 0
        if known is not None and known.revision >= revision:
            return
        if entry.operation in _DELETE_OPS or entry.value is None:
            self._entries.pop(entry.key, None)
            return
        try:
            job = codec.unpack_model(entry.value, Job)
        except codec.CodecError as exc:
            log.error("unreadable job %s: %s", entry.key, exc)
            return
        self._entries[entry.key] = Entry(job, revision)

    # -- reads ------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        entry = self._entries.get(job_id)
        return entry.job if entry else None

    def jobs(self) -> Iterable[Job]:
        return [entry.job for entry in list(self._entries.values())]

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, prefix: str) -> Job:
        """The one job whose id equals, or else starts with, `prefix`."""
        if (job := self.get(prefix)) is not None:
            return job
        matches = sorted(job_id for job_id in self._entries if job_id.startswith(prefix))
        if not matches:
            raise JobError("not_found", f"job {prefix!r} not found")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise JobError("ambiguous", f"job prefix {prefix!r} matches {shown}")
        return self._entries[matches[0]].job

    # -- writes -----------------------------------------------------------------------
    async def create(self, job: Job) -> Job:
        revision = await self._kv_or_fail().create(job.job_id, codec.pack_model(job))
        self._entries[job.job_id] = Entry(job, revision)
        await self._publish_event(JobEvent(job_id=job.job_id, new=job.state, reason="submitted"))
        return job

    async def change(self, job_id: str, change: Change) -> Job | None:
        """Apply `change` by compare-and-set, retrying lost races; the job as stored after.

        None when the job does not exist. A change that returns None writes nothing.
        """
        for _ in range(CAS_ATTEMPTS):
            entry = self._entries.get(job_id)
            if entry is None:
                return None
            job = change(entry.job)
            if job is None:
                return entry.job
            job = job.model_copy(update={"updated_at": utcnow()})
            try:
                revision = await self._kv_or_fail().update(
                    job_id, codec.pack_model(job), last=entry.revision
                )
            except KeyWrongLastSequenceError:
                await self._reload(job_id)
                continue
            self._entries[job_id] = Entry(job, revision)
            await self._after_write(entry.job, job)
            return job
        raise JobError("conflict", f"job {job_id} kept changing; try again")

    async def _after_write(self, before: Job, after: Job) -> None:
        if before.state != after.state:
            event = JobEvent(job_id=after.job_id, old=before.state, new=after.state)
            await self._publish_event(event.model_copy(update={"reason": after.reason}))
        was_active = {e.exec_id for e in before.executions if e.state in ACTIVE}
        cancelled = [
            e
            for e in after.executions
            if e.exec_id in was_active and e.state is ExecState.CANCELLED
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

    async def _reload(self, job_id: str) -> None:
        """Re-read one job after a lost compare-and-set."""
        try:
            entry = await self._kv_or_fail().get(job_id)
        except Exception:  # deleted or missing: forget it
            self._entries.pop(job_id, None)
            return
        self._entries.pop(job_id, None)
        self._apply(entry)

    def _kv_or_fail(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("job store used before start()")
        return self._kv


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
        # decode validates the whole spec: a bad one is an "invalid" reply naming the field.
        request = codec.decode(data, JobSubmitRequest, self._limits)
        job = await self._store.create(Job(job_id=new_job_id(), spec=request.spec))
        self._kick(job.job_id)
        return JobSubmitReply(job_id=job.job_id)

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
