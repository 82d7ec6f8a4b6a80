"""`hive.api.job.{submit,list,get,executions,stop}`: reads from memory, writes through
the store; who may do what to whose job is checked here (`check_owner`).

Replies stay small whatever a job's count: `list` sends each job's executions as
counts by state, `get` a job's counts and at most SHOWN of its executions (the ones
worth a look first: failed, lost, running), and `executions` pages through the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hivectl.core import codec
from hivectl.core.jobs import (
    JOB_TERMINAL,
    ExecState,
    Execution,
    Job,
    JobExecutionsReply,
    JobExecutionsRequest,
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
from hivectl.core.models import ErrorReply, Message, OkReply
from hivectl.core.quotas import Quota
from hivectl.core.users import ADMIN_USER, Role, article
from requester.jobs.executions import finish
from requester.jobs.fenced import JobError
from requester.jobs.records import JobStore
from requester.routing import REPLY_HEADROOM, ApiRouter, Refusal, current_role, current_user

Kick = Callable[[str], None]
# The leader's queue of waiting jobs, in order; None on a requester that does not lead.
Queue = Callable[[], list[Job] | None]
Forward = Callable[[bytes], Awaitable[bytes]]  # a request to the leader; its reply
SHOWN = 100  # executions a `get` carries; `executions` pages through the rest
# What `get` shows first of a big job: what went wrong, then what runs, then the rest.
_INTEREST = {
    ExecState.FAILED: 0,
    ExecState.LOST: 0,
    ExecState.RUNNING: 1,
    ExecState.STARTING: 1,
    ExecState.ACCEPTED: 2,
    ExecState.OFFERED: 2,
}


class JobApi(ApiRouter):
    noun = "job"

    def __init__(
        self,
        store: JobStore,
        *,
        kick: Kick,
        placer: Callable[[Job], str] = lambda job: "",
        max_payload: int,
        limits: codec.Limits,
        quotas: Callable[[str], Quota] | None = None,
        queue: Queue | None = None,
        forward: Forward | None = None,
    ) -> None:
        self._store = store
        self._kick = kick
        self._placer = placer  # who places a new job: this requester, or "" (the leader)
        self._max_reply = max_payload - REPLY_HEADROOM
        self._limits = limits
        self._quotas = quotas
        self._queue = queue
        self._forward = forward
        super().__init__()
        self.handlers.update(
            submit=self.submit,
            list=self.list_jobs,
            get=self.get_job,
            executions=self.executions,
            stop=self.stop_job,
        )
        # Reads check ownership in the handler (a submitter reads only its own jobs).
        read, submit = Role.VIEWER, Role.SUBMITTER
        self.roles.update(submit=submit, list=read, get=read, executions=read, stop=submit)

    async def submit(self, data: bytes) -> Message:
        """Create the job; a repeat of a submit (same id, same spec) gets the same job.

        Clients pick the id, so a submit whose reply was lost can be sent again without
        a second job; the same id with another spec is refused. `decode` validates the
        whole spec: a bad one is an "invalid" reply naming the field.
        """
        request = codec.decode(data, JobSubmitRequest, self._limits)
        job_id = request.job_id or new_job_id()
        known = self._store.record(job_id)  # a retry usually finds it here, with no write
        if known is None:
            self._check_queued_quota(current_user())
            job = Job(job_id=job_id, spec=request.spec, owner=current_user())
            known, created = await self._store.create(
                job.model_copy(update={"placer": self._placer(job)})
            )
            if created:
                self._kick(job_id)
                return JobSubmitReply(job_id=job_id)
        if not known.spec.same_as(request.spec):
            raise JobError(
                "exists",
                f"job {job_id} exists with another spec: submit this one with another id (or none)",
            )
        return JobSubmitReply(job_id=job_id)

    def _check_queued_quota(self, owner: str) -> None:
        """A submit over the owner's queued-jobs quota is refused (a retry of one that
        was stored is not: it finds its job first). Submits in flight at once may each
        pass the count before any is stored: the quota can be passed by that many."""
        limit = self._quotas(owner).queued if self._quotas is not None else None
        if limit is None:
            return
        waiting = self._store.owners.waiting(owner)
        if waiting >= limit:
            raise JobError(
                "quota",
                f"quota: {owner} has {waiting} jobs waiting to start, its quota allows "
                f"{limit}; wait for some to start, or stop some (hivectl job list --queued)",
            )

    async def list_jobs(self, data: bytes) -> Message | bytes:
        request = codec.decode(data, JobListRequest, self._limits)
        user, role = current_user(), current_role()
        if request.everyone and not role.reads_all_jobs:
            raise Refusal(
                "forbidden",
                f"{user} is {article(role)}: listing everyone's jobs needs the viewer or "
                "operator role (without --all: your own jobs)",
            )
        if request.queued:
            page = await self._queued(data, request)
            return self._owned(page, None if request.everyone else user)
        records = sorted(
            (
                j
                for j in self._store.records()
                if (request.state is None or j.state == request.state)
                and (request.everyone or j.owner == user)
            ),
            key=_newest_first,
        )
        if request.after:
            after = self._store.record(request.after)
            if after is None:
                raise JobError("not_found", f"job {request.after!r} (list position) not found")
            mark = _newest_first(after)
            records = [j for j in records if _newest_first(j) > mark]
        return self._page([self._counted(j) for j in records[: request.limit + 1]], request.limit)

    async def _queued(self, data: bytes, request: JobListRequest) -> Message | bytes:
        """The leader's queue, a page at a time; another requester asks the leader."""
        jobs = self._queue() if self._queue is not None else None
        if jobs is not None:
            return self._queue_page(jobs, request)
        if self._forward is None:
            raise JobError("unavailable", "this requester keeps no queue of waiting jobs")
        return await self._forward(data)

    def _owned(self, page: Message | bytes, owner: str | None) -> Message | bytes:
        """A queue page with `owner`'s jobs alone (None: everyone's). Positions stay
        those in the whole queue, and `next` stays, so the client pages on."""
        if owner is None:
            return page
        reply = page if isinstance(page, Message) else codec.decode(page, None, self._limits)
        if not isinstance(reply, JobListReply):
            return reply  # an error from the leader, passed on as it came
        return reply.model_copy(update={"jobs": [j for j in reply.jobs if j.owner == owner]})

    def _queue_page(self, jobs: list[Job], request: JobListRequest) -> JobListReply:
        if request.after:
            start = next((i + 1 for i, j in enumerate(jobs) if j.job_id == request.after), -1)
            if start < 0:
                raise JobError("not_found", f"job {request.after!r} (queue position) not found")
            jobs = jobs[start:]
        return self._page(jobs[: request.limit + 1], request.limit)

    async def on_leader_queue(self, data: bytes) -> bytes | None:
        """A requester that does not lead asks for the queue: answered by the leader
        alone (None elsewhere: the others stay silent)."""
        jobs = self._queue() if self._queue is not None else None
        if jobs is None:
            return None
        reply: Message
        try:
            reply = self._queue_page(jobs, codec.decode(data, JobListRequest, self._limits))
        except JobError as exc:
            reply = ErrorReply(code=exc.code, reason=exc.reason)
        except codec.CodecError as exc:
            reply = exc.reply()
        return codec.encode(reply)

    def _counted(self, record: Job) -> Job:
        """The job as a list shows it: its executions as counts by state."""
        job = self._store.get(record.job_id) or record
        ran = {e.node_id for e in job.executions if e.state is not ExecState.REJECTED}
        update = {"executions": [], "counts": job.tally(), "nodes": sorted(ran)[:1024]}
        return record.model_copy(update=update)

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
        job = resolve_for_caller(self._store, request.id)
        check_owner(job)
        if len(job.executions) <= SHOWN:
            return JobGetReply(job=job)
        ranked = sorted(job.executions, key=lambda e: (_INTEREST.get(e.state, 3), e.exec_id))
        shown = sorted(ranked[:SHOWN], key=lambda e: e.exec_id)
        return JobGetReply(job=job.model_copy(update={"executions": shown, "counts": job.tally()}))

    async def executions(self, data: bytes) -> Message:
        request = codec.decode(data, JobExecutionsRequest, self._limits)
        job = resolve_for_caller(self._store, request.id)
        check_owner(job)
        chosen = _filtered(job.executions, request)
        start = 0
        if request.after:
            start = next((i + 1 for i, e in enumerate(chosen) if e.exec_id == request.after), -1)
            if start < 0:
                raise JobError(
                    "not_found", f"execution {request.after!r} (page position) not found"
                )
        limit = request.limit
        while True:
            page = chosen[start : start + limit]
            more = start + len(page) < len(chosen)
            reply = JobExecutionsReply(
                job_id=job.job_id,
                executions=page,
                next=page[-1].exec_id if more and page else "",
                total=len(chosen),
            )
            if len(codec.encode(reply)) <= self._max_reply or limit == 1:
                return reply
            limit = max(1, limit // 2)

    async def stop_job(self, data: bytes) -> Message:
        request = codec.decode(data, JobStopRequest, self._limits)
        job = resolve_for_caller(self._store, request.id)
        check_owner(job, change=True)
        user = current_user()
        reason = request.reason or (
            "stopped by an operator" if user == ADMIN_USER else f"stopped by {user}"
        )
        # A terminal job is left as it is: stopping it again is not an error.
        await self._store.change(
            job.job_id,
            lambda j: None if j.state in JOB_TERMINAL else finish(j, JobState.STOPPED, reason),
        )
        return OkReply(id=job.job_id)


def resolve_for_caller(store: JobStore, prefix: str) -> Job:
    """The job `prefix` names for the caller: a prefix matches only their own jobs unless
    their role reads everyone's, so an ambiguous prefix never lists others' job ids."""
    return store.resolve(prefix, None if current_role().reads_all_jobs else current_user())


def check_owner(job: Job, *, change: bool = False) -> None:
    """Refuse `not_yours` unless the caller owns `job` or its role reads (`change`:
    stops) everyone's jobs."""
    if job.owner == current_user():
        return
    role = current_role()
    if role.manages_all_jobs if change else role.reads_all_jobs:
        return
    raise Refusal("not_yours", f"job {job.job_id} belongs to {job.owner}")


def _filtered(executions: list[Execution], request: JobExecutionsRequest) -> list[Execution]:
    """The executions of the request's state and node (a unique prefix of a node id)."""
    chosen = executions
    if request.state is not None:
        chosen = [e for e in chosen if e.state is request.state]
    if request.node:
        nodes = {e.node_id for e in chosen if e.node_id.startswith(request.node)}
        if request.node in nodes:
            nodes = {request.node}
        if len(nodes) > 1:
            shown = ", ".join(sorted(nodes)[:5])
            raise JobError("ambiguous", f"node prefix {request.node!r} matches {shown}")
        chosen = [e for e in chosen if e.node_id in nodes]
    return chosen


def _newest_first(job: Job) -> tuple[float, str]:
    return (-job.created_at.timestamp(), job.job_id)
