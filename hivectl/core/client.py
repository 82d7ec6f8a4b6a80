"""The Python client for scripts: `hive.AsyncClient` (and, over it, `hive.Client`).

One NATS connection for the whole session, found as hivectl finds it (flags here as
arguments > HIVE_* environment > hivectl's config file > defaults), so
`hive.AsyncClient()` works wherever `hivectl` does. Every method is one or a few
requests to the requester over that connection; many may be in flight at once.

    async with hive.AsyncClient() as client:
        ids = await client.submit_many([{"engine": "process", "command": ["true"]}] * 100)
        jobs = await client.wait(ids)

Submits name their job: the client picks each id before sending, so a submit that got
no reply is sent again with the same id and never makes a second job. Errors are
`hive.HiveError`s with the texts hivectl prints (see hivectl.core.errors).
"""

from __future__ import annotations

import asyncio
import builtins
import difflib
import getpass
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import aclosing
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from nats.aio.client import Client as Nats
from nats.errors import Error as NatsError
from pydantic import ValidationError

from hivectl.core import codec, paging
from hivectl.core.api import ACTOR_HEADER
from hivectl.core.bus import (
    BusError,
    CredentialsError,
    NoAnswer,
    ask,
    connect_cli,
    connection_failure,
    read_reply,
)
from hivectl.core.config import ClientConfig, load_config
from hivectl.core.credentials import names_a_user
from hivectl.core.errors import (
    HiveError,
    InvalidId,
    InvalidSpec,
    RemoteError,
    SubmitError,
    SubmitUncertain,
    WaitTimeout,
)
from hivectl.core.jobs import (
    JOB_ID_PATTERN,
    REFUSED_FIELDS,
    ExecState,
    Execution,
    Job,
    JobExecutionsReply,
    JobExecutionsRequest,
    JobGetReply,
    JobGetRequest,
    JobListReply,
    JobListRequest,
    JobSpec,
    JobState,
    JobStopRequest,
    JobSubmitReply,
    JobSubmitRequest,
    ResourceRequest,
    new_job_id,
)
from hivectl.core.jobwait import JobTracker
from hivectl.core.models import ID_PATTERN, Message, OkReply
from hivectl.core.subjects import Subjects

if TYPE_CHECKING:
    from hivectl.core.signing import UserCredential

M = TypeVar("M", bound=Message)
T = TypeVar("T")
Spec = JobSpec | Mapping[str, Any]
Jobs = list[Job]  # names for annotations inside the class, where `list` is a method
Ids = list[str]
_JOB_ID = re.compile(JOB_ID_PATTERN)
_PREFIX = re.compile(ID_PATTERN)
# A submit with no reply is sent again (the same job id: it never runs twice) up to this
# many times in all, each waiting the client's timeout, with 0.2s, 0.4s, 0.8s between
# them: under half a minute with the default timeout. So is one the requester could not
# store yet ("store unavailable": on a NATS cluster, a server down while another takes
# over its streams, which takes seconds). Refusals are not retried.
SUBMIT_ATTEMPTS = 4
STORE_UNAVAILABLE = "store_unavailable"
CONCURRENCY = 64  # requests in flight at once for the methods that make many


class AsyncClient:
    """A session with a Hive cluster. `url`, `credentials_file`, `timeout` (seconds
    per request) and `actor` (who you are, recorded with every change you make; default
    <os user>@<hostname>) override the config; `config` replaces it whole (hivectl
    passes its own); `trace` is told of every request (hivectl's `-v`)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        credentials_file: str | Path | None = None,
        timeout: float | None = None,
        config_file: str | Path | None = None,
        config: ClientConfig | None = None,
        trace: Callable[[str], None] | None = None,
        actor: str | None = None,
    ) -> None:
        if config is None:
            nats = {"url": url, "credentials_file": credentials_file}
            path = Path(config_file) if config_file is not None else None
            config = load_config(ClientConfig, path, nats=nats, timeout=timeout, actor=actor)
        self.config = config
        self.subjects = Subjects(config.nats.prefix)
        # Sent with every request: the requester records it with what the request changes.
        self._headers = {ACTOR_HEADER: config.actor or default_actor()}
        self._trace = trace
        self._nc: Nats | None = None
        self.user = _user_credential(config)

    @property
    def signed(self) -> bool:
        """Whether this client is a user's (a credential file with `[hive]`): its
        requests are signed, and it has no JetStream or event access of its own."""
        return self.user is not None

    # -- the connection -------------------------------------------------------------

    @property
    def actor(self) -> str:
        """Who this client says it is to the requester (see `ClientConfig.actor`)."""
        return self._headers[ACTOR_HEADER]

    @property
    def nc(self) -> Nats:
        """The NATS connection (for what the client does not cover)."""
        if self._nc is None:
            raise HiveError("the client is not connected: use `async with` or connect()")
        return self._nc

    async def connect(self) -> AsyncClient:
        if self._nc is None or self._nc.is_closed:
            self._nc = await connect_cli(self.config.nats, name="hive-client")
        return self

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except (NatsError, OSError, TimeoutError):  # a broken connection: nothing to say
                await nc.close()

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def ask(self, noun: str, verb: str, message: Message) -> bytes:
        """One request to `<prefix>.api.<noun>.<verb>`: the reply undecoded. A connection
        that closed (a NATS server restarted) is opened again first."""
        if self._nc is None or self._nc.is_closed:
            await self.connect()
        nc = self.nc
        user = self.user
        subject = (self.subjects.api if user is None else self.subjects.uapi)(noun, verb)
        started = time.perf_counter()
        payload, headers = codec.encode(message), self._headers
        if user is not None:
            headers = headers | user.sign(subject, payload)
        try:
            data = await ask(nc, subject, payload, self.config.timeout, headers)
            if user is not None:
                data = user.opened(subject, data)
        except NoAnswer:
            if not nc.is_closed:
                raise
            raise BusError(self._lost(ConnectionError(), closed=True)) from None
        except NatsError as exc:
            raise BusError(self._lost(exc, closed=nc.is_closed)) from None
        if self._trace is not None:
            elapsed = (time.perf_counter() - started) * 1000
            self._trace(f"{subject} {message.kind}: {len(data)} bytes in {elapsed:.1f}ms")
        return data

    async def call(self, noun: str, verb: str, message: Message, expect: type[M]) -> M:
        """A request and its reply as `expect`; an error reply raises its RemoteError."""
        return read_reply(
            self.subjects.api(noun, verb), await self.ask(noun, verb, message), expect
        )

    def _lost(self, exc: BaseException, *, closed: bool) -> str:
        return connection_failure(self.config.nats.url, exc, closed=closed)

    # -- submitting ---------------------------------------------------------------------

    async def submit(self, spec: Spec, *, job_id: str | None = None) -> str:
        """Submit one job (a JobSpec, or a mapping of its fields); its id. `job_id`
        names it (default: a new one): the same id and spec again give the same job."""
        return await self.send_submit(submit_request(spec, job_id))

    async def submit_many(
        self,
        specs: Iterable[Spec],
        *,
        concurrency: int = CONCURRENCY,
        job_ids: Iterable[str] | None = None,
    ) -> Ids:
        """Submit every spec, up to `concurrency` at once; their ids, in order. Every
        spec is checked before any is sent. On failures, SubmitError says which were
        submitted; `job_ids=exc.job_ids` submits the rest without repeating any."""
        chosen = list(job_ids) if job_ids is not None else None
        requests = [
            submit_request(spec, chosen[i] if chosen else None, index=i)
            for i, spec in enumerate(specs)
        ]
        if chosen is not None and len(chosen) != len(requests):
            raise InvalidId(f"{len(chosen)} job ids for {len(requests)} specs")
        answers: dict[int, str] = {}
        errors: dict[str, HiveError] = {}
        todo = iter(enumerate(requests))

        async def worker() -> None:
            for index, request in todo:  # one shared iterator: each request goes once
                if errors:
                    return
                try:
                    answers[index] = await self.send_submit(request)
                except HiveError as exc:
                    errors[str(request.job_id)] = exc

        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, len(requests)))):
                group.create_task(worker())
        if errors:
            ids = [str(r.job_id) for r in requests]
            raise SubmitError(ids, [answers[i] for i in sorted(answers)], errors)
        return [answers[i] for i in range(len(requests))]

    async def send_submit(self, request: JobSubmitRequest) -> str:
        """Submit, sending the same request again (same job id) while no reply comes or
        the requester could not store it yet. SubmitUncertain when a try may have been
        stored but none was answered; the id is the requester's answer (an older one
        picks its own)."""
        import stamina  # only a submit needs it

        maybe_stored: list[HiveError] = []

        def again(exc: Exception) -> bool:
            retry = _again(exc)
            if retry and isinstance(exc, NoAnswer | RemoteError):
                maybe_stored.append(exc)
            return retry

        try:
            async for attempt in stamina.retry_context(
                on=again, attempts=SUBMIT_ATTEMPTS, wait_initial=0.2, wait_max=2.0,
                wait_jitter=0.2, timeout=SUBMIT_ATTEMPTS * self.config.timeout + 5,
            ):  # fmt: skip
                with attempt:
                    return (await self.call("job", "submit", request, JobSubmitReply)).job_id
        except HiveError as exc:
            if maybe_stored and _again(exc):
                raise SubmitUncertain(str(request.job_id), exc) from None
            raise
        raise AssertionError("retry_context ended without a result")

    # -- reading and stopping ---------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """One job, by id or unique prefix; NotFound, Ambiguous otherwise."""
        request = JobGetRequest(id=check_prefix(job_id))
        return (await self.call("job", "get", request, JobGetReply)).job

    async def list(
        self, state: JobState | str | None = None, *, everyone: bool = False, queued: bool = False
    ) -> Jobs:
        """Your jobs (`everyone`: every user's) in `state`, if given, newest first, from
        every page; each with its executions counted (`Job.tally()`), not listed. With
        `queued`, the jobs waiting to be placed, in the order they will be
        (`Job.position`)."""
        query = JobListRequest(
            state=JobState(state) if state is not None else None,
            everyone=everyone,
            queued=queued,
        )
        subject = self.subjects.api("job", "list")

        async def page(after: str) -> bytes:
            return await self.ask("job", "list", query.model_copy(update={"after": after}))

        pages = await paging.follow(
            page, lambda data: read_reply(subject, data, JobListReply), self._flush
        )
        return [job for reply in pages for job in reply.jobs]

    async def _flush(self) -> None:
        await self.nc.flush(timeout=max(1, int(self.config.timeout)))

    async def executions(
        self, job_id: str, state: ExecState | str | None = None, node: str | None = None
    ) -> AsyncIterator[Execution]:
        """A job's executions, oldest first, page by page; only those in `state` or on
        `node` (an id or unique prefix) when given."""
        after = ""
        while True:
            reply = await self.executions_page(job_id, state, node, after)
            for execution in reply.executions:
                yield execution
            if not reply.next:
                return
            after = reply.next

    async def executions_page(
        self, job_id: str, state: ExecState | str | None, node: str | None, after: str = ""
    ) -> JobExecutionsReply:
        """One page of `executions`: `next` is the `after` of the page that follows."""
        request = JobExecutionsRequest(
            id=check_prefix(job_id),
            state=ExecState(state) if state is not None else None,
            node=node or "",
            after=after,
        )
        return await self.call("job", "executions", request, JobExecutionsReply)

    async def stop(self, job_id: str, reason: str = "") -> None:
        """Stop a job: its executions are cancelled and it ends STOPPED (a job already
        finished is left as it is)."""
        await self.call(
            "job", "stop", JobStopRequest(id=check_prefix(job_id), reason=reason), OkReply
        )

    # -- waiting ------------------------------------------------------------------------

    async def wait(
        self, job_ids: str | Iterable[str], timeout: float | None = None
    ) -> dict[str, Job]:
        """Wait until every job is COMPLETED, FAILED or STOPPED: their final records, by
        the ids given. One subscription to every job's events and a get per job, so
        thousands cost little; WaitTimeout after `timeout` seconds."""
        tracker = JobTracker(self, [job_ids] if isinstance(job_ids, str) else job_ids)
        try:
            async with asyncio.timeout(timeout), aclosing(tracker.changes()) as changes:
                async for _change in changes:
                    pass
        except TimeoutError:
            if timeout is None:
                raise
            raise WaitTimeout(timeout, tracker.done(), tracker.pending()) from None
        return tracker.done()

    async def watch(self, job_ids: str | Iterable[str]) -> AsyncIterator[tuple[str, JobState]]:
        """(job id, state) for each job's state now, then for every change, until all
        are finished."""
        tracker = JobTracker(self, [job_ids] if isinstance(job_ids, str) else job_ids)
        async with aclosing(tracker.changes()) as changes:
            async for change in changes:
                yield change

    async def bounded(self, calls: Iterable[Callable[[], Awaitable[T]]]) -> builtins.list[T]:
        """Run `calls` CONCURRENCY at a time; their results in order. The first failure
        cancels the rest and is raised as itself."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(call: Callable[[], Awaitable[T]]) -> T:
            async with gate:
                return await call()

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(call)) for call in calls]
        except BaseExceptionGroup as failed:
            raise _first(failed) from None
        return [task.result() for task in tasks]


def _user_credential(config: ClientConfig) -> UserCredential | None:
    """The user a credentials file names; None for a role's file (the operator's), which
    is all most hivectl commands read: the keys' modules (20 ms) load only for a user."""
    path = config.nats.credentials_file
    if path is None:
        return None
    try:
        if not names_a_user(path):
            return None
        from hivectl.core.signing import read_user_credential

        return read_user_credential(path)
    except ValueError as exc:
        raise CredentialsError(str(exc)) from None


def default_actor() -> str:
    """`<os user>@<hostname>`: who runs this, as far as this machine says."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (a container, say)
        user = f"uid{os.getuid()}"
    actor = f"{user}@{socket.gethostname()}"
    return "".join(c for c in actor if c.isprintable())[:128] or "unknown"


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _again(exc: BaseException) -> bool:
    """Worth sending the same submit again: no reply, or a store that could not answer."""
    if isinstance(exc, RemoteError):
        return exc.code == STORE_UNAVAILABLE
    return isinstance(exc, BusError)


def submit_request(spec: Spec, job_id: str | None, index: int | None = None) -> JobSubmitRequest:
    """The request for `spec` as `job_id` (a new id when None), checked as the
    requester and every node will check it: InvalidSpec names the field."""
    if job_id is not None and not _JOB_ID.match(job_id):
        raise InvalidId(
            f"invalid job id {job_id!r}: use 'j-' and 16 hex digits, like {new_job_id()}"
        )
    if not isinstance(spec, JobSpec):
        for field, close in unknown_fields(spec):
            hint = f" (did you mean {close!r}?)" if close else ""
            raise InvalidSpec(field, f"unknown field{hint}", index=index)
    try:
        checked = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    except ValidationError as exc:
        field, problem = spec_problem(exc)
        raise InvalidSpec(field, problem, index=index) from None
    return JobSubmitRequest(spec=checked, job_id=job_id or new_job_id())


def unknown_fields(spec: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, the closest known one or '') for each key of `spec` that JobSpec (or its
    resources) has not: a typo is refused, not dropped."""
    known = {"": list(JobSpec.model_fields), "resources.": list(ResourceRequest.model_fields)}
    resources = spec.get("resources") if isinstance(spec, Mapping) else None
    for parent, mapping in (("", spec), ("resources.", resources)):
        if not isinstance(mapping, Mapping):
            continue
        for key in mapping:
            if str(key) in known[parent] or (not parent and key in REFUSED_FIELDS):
                continue
            close = difflib.get_close_matches(str(key), known[parent], n=1)
            yield f"{parent}{key}", f"{parent}{close[0]}" if close else ""


def spec_problem(exc: ValidationError) -> tuple[str, str]:
    """The first problem: (`field.path`, what is wrong, and how many more there are)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = first["msg"].removeprefix("Value error, ")
    return ".".join(str(part) for part in first["loc"]), f"{text}{more}"


def check_prefix(job_id: str) -> str:
    """A job id or unique prefix as the requester takes them, else InvalidId."""
    if not isinstance(job_id, str) or not _PREFIX.match(job_id):
        raise InvalidId(
            f"invalid job id {job_id!r}: use lowercase letters, digits, '-' and '_' "
            "(up to 63, starting with a letter or digit); a unique prefix is enough"
        )
    return job_id
