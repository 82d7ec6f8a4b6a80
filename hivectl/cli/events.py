"""`hivectl events`: what happened to nodes, jobs and tokens, who did it and why.

Read from the HIVE_EVENTS stream (kept 7 days) with an ephemeral ordered consumer, so
nothing is left behind on the server and no requester need answer: the events of a node
deleted long ago read as well as the rest.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import pydantic_core
import typer
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from hivectl.cli.api import Api, run_api
from hivectl.cli.common import (
    APP_SETTINGS,
    EXIT_USAGE,
    NoHeadersOption,
    OutputOption,
    check_id,
    fail,
    info,
    output_format,
)
from hivectl.cli.output import (
    COLUMN_GAP,
    NONE,
    OutputFormat,
    age,
    dump_yaml,
    plain_lines,
    print_data,
    visible,
)
from hivectl.core import codec
from hivectl.core.bus import NoAnswer, NoResponder
from hivectl.core.config import parse_duration
from hivectl.core.errors import NotFound, RemoteError
from hivectl.core.jobs import JobEvent
from hivectl.core.models import NodeEvent
from hivectl.core.tokens import TokenEvent
from hivectl.core.users import UserEvent

Event = NodeEvent | JobEvent | TokenEvent | UserEvent
POLL = 1.0  # seconds between looks at whether the stream has more, when not following
DESCRIBE_EVENTS = 10
COLUMNS = ["TIME", "OBJECT", "EVENT", "CHANGE", "ACTOR", "REASON"]

# One command with no subcommands: the callback is the command (its docstring the help).
app = typer.Typer(subcommand_metavar=" ", **{**APP_SETTINGS, "no_args_is_help": False})


@app.callback(invoke_without_command=True)
def events(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Option("--node", metavar="ID", help="Only this node's events.", show_default=False),
    ] = None,
    job: Annotated[
        str | None,
        typer.Option("--job", metavar="ID", help="Only this job's events.", show_default=False),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="DURATION",
            help="Only events of the last DURATION: 30m, 1h, 2d. Default: all kept (7 days).",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing events as they happen.")
    ] = False,
    output: OutputOption = None,
    no_headers: NoHeadersOption = False,
) -> None:
    """List events: approvals, health changes, deletions, job state changes, tokens.

    Each names who caused it (ACTOR: the operator a command came from, as that
    operator's hivectl named them, `token:<id>` for a node an enrollment token
    approved, `requester:<name>` for what the requester did itself) and why. With
    `--follow`, `-o json` prints one JSON object a line.

    **Examples**

    ```
    hivectl events --since 1h
    hivectl events --node node-1
    hivectl events --job j-5f0c -o json
    hivectl events --follow
    ```
    """
    if node and job:
        fail("give --node or --job, not both", EXIT_USAGE)
    start = _since(since)
    fmt = output_format(ctx, output)
    node_id = check_id(node) if node else None
    job_id = check_id(job, "job") if job else None

    async def work(api: Api) -> None:
        node_full = await _resolve(api, "node", node_id) if node_id else None
        job_full = await _resolve(api, "job", job_id) if job_id else None
        show = Shown(fmt, no_headers=no_headers, follow=follow)
        await read_events(api, (node_full, job_full), start, follow, show.add, show.caught_up)
        show.caught_up()  # not following: everything is in

    run_api(ctx, work)


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        seconds = float(parse_duration(text))
    except ValueError as exc:
        fail(f"invalid --since: {exc}", EXIT_USAGE)
    return datetime.now(UTC) - timedelta(seconds=seconds)


def _subject(api: Api, node_id: str | None, job_id: str | None) -> str:
    """The events subject to read: a node's, a job's, or every one."""
    subjects = api.subjects
    if node_id is not None:
        return subjects.node_events(node_id)
    if job_id is not None:
        return subjects.job_events(job_id)
    return subjects.all_events


async def _resolve(api: Api, noun: str, prefix: str) -> str:
    """A node's or job's id from a unique prefix, where a requester knows it; as given
    otherwise, so a deleted one's events still read."""
    from hivectl.core.api import NodeGetReply, NodeGetRequest
    from hivectl.core.jobs import JobGetReply, JobGetRequest

    try:
        if noun == "node":
            node = await api.call(noun, "get", NodeGetRequest(id=prefix), NodeGetReply)
            return node.node.node_id
        job = await api.call(noun, "get", JobGetRequest(id=prefix), JobGetReply)
        return job.job.job_id
    except (NotFound, NoResponder, NoAnswer):
        return prefix


# -- reading --------------------------------------------------------------------------


async def read_events(
    api: Api,
    target: tuple[str | None, str | None],
    since: datetime | None,
    follow: bool,
    emit: Callable[[Event], None],
    caught_up: Callable[[], None] = lambda: None,
) -> None:
    """Every event of the target (node id, job id; neither: all) from `since`, in
    order, then `caught_up()`; with `follow`, then each new one until interrupted. A
    user's client asks the requester for them (it has no JetStream access)."""
    from hivectl.cli.jobdata import last_seq, patiently  # the stream helpers logs use

    if api.client.signed:
        from hivectl.cli.jobfetch import read_events_api

        async for page in read_events_api(api, target, since, follow, POLL):
            for data in page:
                if (event := _decoded(data)) is not None:
                    emit(event)
            if not page:
                caught_up()  # once: more empty pages say nothing new
        caught_up()
        return
    subject = _subject(api, *target)

    js = api.nc.jetstream()
    stream = api.subjects.events_stream
    if not await _any(js, stream, subject, since):
        caught_up()
        if not follow:
            return
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=since,
    )
    try:
        sub = await patiently(
            lambda: js.subscribe(subject, stream=stream, ordered_consumer=True, config=config),
            stream,
        )
    except NotFoundError:  # no stream: no requester ever ran here
        return
    seen = 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=POLL)
            except TimeoutError:
                if not follow and await last_seq(js, stream, subject) <= seen:
                    return  # what was there expired meanwhile
                continue
            seen = msg.metadata.sequence.stream
            event = _decoded(msg.data)
            if event is not None:
                emit(event)
            if msg.metadata.num_pending == 0:
                caught_up()
                if not follow:
                    return
    finally:
        await sub.unsubscribe()


def _decoded(data: bytes) -> Event | None:
    """The event in a message; None for one this hivectl cannot read (a newer
    requester's, say): not worth stopping for."""
    try:
        event = codec.decode(data, (NodeEvent, JobEvent, TokenEvent, UserEvent))
    except codec.CodecError:
        return None
    return event if isinstance(event, NodeEvent | JobEvent | TokenEvent | UserEvent) else None


async def _any(js: JetStreamContext, stream: str, subject: str, since: datetime | None) -> bool:
    """Whether the stream holds an event on `subject` (newer than `since`)."""
    try:
        last = await js.get_last_msg(stream, subject)
    except NotFoundError:  # no such event, or no stream at all
        return False
    return since is None or last.time is None or last.time >= since


async def recent_node_events(api: Api, node_id: str, count: int = DESCRIBE_EVENTS) -> list[Event]:
    """The last `count` events of a node, oldest first (for `node describe`)."""
    kept: deque[Event] = deque(maxlen=count)
    try:
        await read_events(api, (node_id, None), None, False, kept.append)
    except RemoteError as exc:  # a submitter reads no node's events: describe without
        if exc.code != "forbidden":
            raise
    return list(kept)


# -- showing --------------------------------------------------------------------------


def describe(event: Event) -> tuple[str, str]:
    """(object, event) as the table names them."""
    if isinstance(event, NodeEvent):
        return f"node/{event.node_id}", event.event
    if isinstance(event, JobEvent):
        return f"job/{event.job_id}", "state"
    if isinstance(event, UserEvent):
        return f"user/{event.name}", event.event
    return f"token/{event.token_id}", event.event


def change(event: Event) -> str:
    if not event.old and not event.new:
        return NONE
    return f"{event.old or NONE} -> {event.new or NONE}"


def event_row(event: Event) -> list[str]:
    at = event.at.astimezone(UTC) if event.at.tzinfo else event.at
    what, name = describe(event)
    return [f"{at:%Y-%m-%d %H:%M:%S}", what, name, change(event), event.actor or NONE,
            event.reason or NONE]  # fmt: skip


def describe_lines(events: list[Event], now: datetime) -> list[str]:
    """The `Events:` section of `node describe`, as kubectl ends its describe views."""
    if not events:
        return ["Events:          <none>"]
    rows = [["AGE", "EVENT", "CHANGE", "ACTOR", "REASON"]]
    for event in events:
        rows.append([age(event.at, now), describe(event)[1], change(event),
                     event.actor or NONE, event.reason or NONE])  # fmt: skip
    return ["Events:", *("  " + line for line in plain_lines(rows))]


class Shown:
    """Events written as they come. A table waits for what the stream held already (its
    columns as wide as the widest of those; a later, longer cell widens its own row
    only); JSON and YAML come whole at the end, or, when following, one event at a time
    (a JSON object a line, YAML documents)."""

    def __init__(self, fmt: OutputFormat, *, no_headers: bool, follow: bool) -> None:
        self.fmt = fmt
        self.no_headers = no_headers
        self.follow = follow
        self.held: list[Event] = []
        self.widths: list[int] | None = None  # set once the table has started
        self.caught = False

    def add(self, event: Event) -> None:
        if self.fmt.is_data and self.follow:
            self._data_line(event)
        elif self.widths is not None:
            self._row(event_row(event))
        else:
            self.held.append(event)

    def caught_up(self) -> None:
        """Everything the stream held is in: show it (a table starts here). Once."""
        if self.caught:
            return
        self.caught = True
        if self.fmt.is_data:
            if not self.follow:
                print_data([_data(event) for event in self.held], self.fmt)
            self.held = []
            return
        rows = [event_row(event) for event in self.held]
        self.held = []
        table = [COLUMNS, *rows]
        self.widths = [max(len(visible(row[i])) for row in table) for i in range(len(COLUMNS))]
        if not rows and not self.follow:
            info("No events found.")
            return
        if not self.no_headers:
            self._row(COLUMNS)
        for row in rows:
            self._row(row)

    def _row(self, cells: list[str]) -> None:
        assert self.widths is not None
        shown = [visible(cell) for cell in cells]
        padded = [cell.ljust(width) for cell, width in zip(shown[:-1], self.widths, strict=False)]
        _print(COLUMN_GAP.join([*padded, shown[-1]]))

    def _data_line(self, event: Event) -> None:
        if self.fmt is OutputFormat.JSON:
            _print(pydantic_core.to_json(_data(event)).decode())
        else:
            _print("---\n" + dump_yaml(_data(event)).rstrip("\n"))


def _data(event: Event) -> dict[str, object]:
    return {"kind": event.kind, **event.model_dump(mode="json")}


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
