"""What a job leaves behind: its logs (stream HIVE_LOGS) and its results (object store
`hive_results`), read by `hivectl job submit|logs|results`.

Each execution's output is a run of messages on `hive.logs.<job>.<exec>`: raw chunks
whose LOG_STREAM_HEADER says stdout or stderr, closed by one LOG_EOF_HEADER message.
Results are one tar.gz object per execution, named by the execution id; they are
extracted with tarfile's `data` filter, member by member, so a hostile archive can
neither write outside the target directory nor stop the safe members from landing.

hivectl run with a user's credential has neither JetStream nor events: it asks the
requester for logs and results (hivectl.cli.jobfetch) and polls for a job's changes.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import suppress
from io import BufferedRandom
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError, ObjectNotFoundError

from hivectl.cli.api import Api, CliError
from hivectl.cli.common import info
from hivectl.cli.jobview import shown_executions
from hivectl.core.jobs import (
    EXEC_TERMINAL,
    JOB_TERMINAL,
    LOG_DROPPED_HEADER,
    LOG_EOF_HEADER,
    LOG_STREAM_HEADER,
    Execution,
    Job,
    JobGetReply,
    JobGetRequest,
    JobType,
)

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails, RetryHook

POLL_INTERVAL = 0.2  # how often a waiting hivectl looks again, in seconds
# Tries of a JetStream call that may meet a stream electing its leader, each waiting the
# JetStream timeout (5s): an election after a server's kill -9 took 4 to 8 seconds.
STREAM_ATTEMPTS = 3
Live = Callable[[], Awaitable[bool]]
T = TypeVar("T")


# -- waiting on a job ----------------------------------------------------------------


class JobWatch:
    """Follows one job: its events wake it, polling every POLL_INTERVAL backs them up.

    The requester publishes a JobEvent on `hive.events.job.<id>` when the job changes;
    what it says does not matter here, only that it is time to ask `job get` again.
    """

    def __init__(self, job_id: str = "") -> None:
        self.job_id = job_id

    async def get(self, api: Api) -> Job:
        query = JobGetRequest(id=self.job_id)
        return (await api.call("job", "get", query, JobGetReply)).job

    async def _events(self, api: Api) -> Subscription | None:
        """The job's events; None for a user's client, which may not read them."""
        if api.client.signed:
            return None
        return await api.nc.subscribe(api.subjects.job_events(self.job_id))

    async def wait(self, api: Api, on_change: Callable[[Job], None]) -> Job:
        """The job once it is terminal; `on_change` sees every state read on the way."""
        sub = await self._events(api)
        try:
            while True:
                job = await self.get(api)
                on_change(job)
                if job.state in JOB_TERMINAL:
                    return job
                await _nudge(sub)
        finally:
            if sub is not None:
                await sub.unsubscribe()

    async def follow(self, api: Api, js: JetStreamContext | None, show_all: bool) -> Job:
        """Stream each execution's output as it runs, one execution after the other."""
        done: set[str] = set()
        sub = await self._events(api)
        try:
            while True:
                job = await self.get(api)
                todo = [e for e in shown_executions(job, show_all) if e.exec_id not in done]
                if not todo:
                    if job.state in JOB_TERMINAL:
                        return job
                    await _nudge(sub)
                    continue
                await self.replay(api, js, job, todo[:1], live=True)
                done.add(todo[0].exec_id)
        finally:
            if sub is not None:
                await sub.unsubscribe()

    async def replay(
        self,
        api: Api,
        js: JetStreamContext | None,
        job: Job,
        executions: list[Execution],
        live: bool = False,
    ) -> None:
        """Copy the output of `executions`; with `live`, tail those still running."""
        several = job.spec.type is JobType.OPS or job.spec.count > 1 or len(job.executions) > 1
        for execution in executions:
            if several:
                info(f"==> {execution.exec_id} on {execution.node_id} <==")
            running = live and execution.state not in EXEC_TERMINAL
            await copy_logs(api, js, execution, self._live(api, execution) if running else None)

    def _live(self, api: Api, execution: Execution) -> Live:
        async def live() -> bool:
            job = await self.get(api)
            return any(
                e.exec_id == execution.exec_id and e.state not in EXEC_TERMINAL
                for e in job.executions
            )

        return live


async def _nudge(sub: Subscription | None) -> None:
    """Wait for the next event, or POLL_INTERVAL, whichever comes first."""
    if sub is None:
        await asyncio.sleep(POLL_INTERVAL)
        return
    with suppress(TimeoutError):
        await sub.next_msg(timeout=POLL_INTERVAL)


# -- logs ----------------------------------------------------------------------------


async def check_log_stream(api: Api) -> JetStreamContext | None:
    """JetStream, once the logs stream is known to exist (else a one-line error);
    None for a user's client, which reads logs through the requester."""
    if api.client.signed:
        return None
    stream = api.subjects.logs_stream
    js = api.nc.jetstream()
    try:
        await patiently(lambda: js.stream_info(stream), stream)
    except NotFoundError:
        raise CliError(f"there is no log stream {stream} (is the requester running?)") from None
    return js


async def patiently(call: Callable[[], Awaitable[T]], stream: str) -> T:
    """`call()`, a JetStream request about `stream`, asked again while nothing answers:
    on a NATS cluster, a server that went down leaves the streams it led (and the meta
    group, which creates consumers, if it led that) without a leader for some seconds,
    4 to 8 after a kill -9, and what has no leader does not answer."""
    import stamina  # only commands that read logs need it

    stamina.instrumentation.set_on_retry_hooks([_asking_again(stream)])
    async for attempt in stamina.retry_context(
        on=NatsTimeoutError, attempts=STREAM_ATTEMPTS, wait_initial=0.2, wait_max=1.0
    ):
        with attempt:
            return await call()
    raise AssertionError("retry_context ended without a result")


def _asking_again(stream: str) -> RetryHook:
    def note(details: RetryDetails) -> None:
        info(f"JetStream did not answer about {stream} (a NATS server away?); asking again")

    return note


async def copy_logs(
    api: Api, js: JetStreamContext | None, execution: Execution, live: Live | None
) -> bool:
    """Copy one execution's output, in order: stdout chunks to stdout, stderr to stderr.

    Ends at its EOF message (returns True). Without `live`, or once `live()` says the
    execution is over, it also ends at the last message stored (returns False).
    """
    if js is None:
        from hivectl.cli.jobfetch import copy_logs_api

        return await copy_logs_api(api, execution, live, note_dropped)
    stream = api.subjects.logs_stream
    subject = api.subjects.logs(execution.job_id, execution.exec_id)
    if live is None and await last_seq(js, stream, subject) == 0:
        return False
    sub = await patiently(
        lambda: js.subscribe(
            subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        ),
        stream,
    )
    seen = 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=POLL_INTERVAL)
            except TimeoutError:
                if (live is None or not await live()) and await last_seq(
                    js, stream, subject
                ) <= seen:
                    return False
                continue
            seen = msg.metadata.sequence.stream
            if write_chunk(msg):
                return True
            if live is None and msg.metadata.num_pending == 0:
                return False
    finally:
        await sub.unsubscribe()


async def last_seq(js: JetStreamContext, stream: str, subject: str) -> int:
    """The stream sequence of the last message on `subject`; 0 when there is none."""
    try:
        msg = await patiently(lambda: js.get_last_msg(stream, subject), stream)
    except NotFoundError:
        return 0
    return int(msg.seq or 0)


def write_chunk(msg: Msg) -> bool:
    """Write one log chunk where it belongs; True for the EOF message."""
    headers = msg.headers or {}
    if LOG_EOF_HEADER in headers:
        note_dropped(headers.get(LOG_DROPPED_HEADER) or 0)
        return True
    out = sys.stderr if headers.get(LOG_STREAM_HEADER) == "stderr" else sys.stdout
    write_bytes(out, msg.data)
    return False


def note_dropped(dropped: int | str) -> None:
    """Say what the node's log cap cut (`dropped` bytes), if it cut anything."""
    if dropped and dropped != "0":
        info(
            f"[the node's max_log_bytes cut this log: {dropped} more bytes were written"
            " and dropped; see `hivectl job describe`]"
        )


def write_bytes(out: IO[str], data: bytes) -> None:
    """Raw bytes to a text stream's buffer, after whatever text it already holds."""
    out.flush()
    buffer = getattr(out, "buffer", None)
    if buffer is None:  # a stream without bytes underneath: decode
        out.write(data.decode(errors="replace"))
    else:
        buffer.write(data)
        buffer.flush()


# -- results -------------------------------------------------------------------------


async def download_results(
    api: Api, job: Job, executions: list[Execution], dest: Path
) -> tuple[list[Path], list[str]]:
    """Extract each execution's archive into `dest/<exec_id>/`: (written, refused)."""
    fetch = await _fetcher(api)
    written: list[Path] = []
    refused: list[str] = []
    found = 0
    for execution in executions:
        with tempfile.TemporaryFile() as archive:
            if not await fetch(api, execution, archive):
                continue
            found += 1
            archive.seek(0)
            files, skipped = extract(archive, dest / execution.exec_id, execution.exec_id)
        written += files
        refused += skipped
    if not found:
        raise CliError(f"no results for {job.job_id}: no execution stored an output archive")
    return written, refused


# Writes an execution's archive into a file; False when it stored none.
Fetch = Callable[[Api, Execution, BufferedRandom], Awaitable[bool]]


async def _fetcher(api: Api) -> Fetch:
    """From the object store itself (the operator credential), or, for a user, a piece
    at a time through the requester, which checks the job is theirs."""
    if api.client.signed:
        from hivectl.cli.jobfetch import fetch_result_api

        return fetch_result_api
    js = api.nc.jetstream()
    try:
        store = await js.object_store(api.subjects.results_store)
    except NotFoundError:
        raise CliError(
            f"there is no results store {api.subjects.results_store} (no job kept outputs yet)"
        ) from None

    async def fetch(api: Api, execution: Execution, archive: BufferedRandom) -> bool:
        try:
            await store.get(execution.exec_id, writeinto=archive)
        except ObjectNotFoundError:
            return False
        return True

    return fetch


def extract(archive: IO[bytes], target: Path, label: str) -> tuple[list[Path], list[str]]:
    """Extract a tar(.gz) under `target` with the `data` filter, member by member."""
    import tarfile  # here: only `job results` needs it

    target.mkdir(parents=True, exist_ok=True)
    root = str(target.resolve())
    written: list[Path] = []
    refused: list[str] = []
    try:
        with tarfile.open(fileobj=archive, mode="r:*") as tar:
            for member in tar:
                try:
                    safe = tarfile.data_filter(member, root)
                    tar.extract(safe, root, filter="data")
                except (tarfile.FilterError, OSError) as exc:
                    refused.append(f"{label}: {member.name}: {exc}")
                    continue
                if safe.isfile():
                    written.append(target / safe.name)
    except tarfile.TarError as exc:
        raise CliError(f"the result archive of {label} is unreadable: {exc}") from None
    return written, refused
