"""What every `hivectl` noun shares: global options, config, the API call, errors.

A noun module builds its own `typer.Typer` and, in each command:

    cfg = client_config(ctx)                       # loads once; config errors exit 2
    reply = call(ctx, "node", "get", NodeGetRequest(id=i), NodeGetReply)

or, for several requests over one connection,

    async def work(api: Api) -> list[NodeView]: ...
    nodes = run_api(ctx, work, status="Listing nodes")

Every expected failure (NATS unreachable, nobody answering, an error reply, a bad
config, selector or id) ends the program with one line `Error: ...` on stderr and
a non-zero exit status; tracebacks are for bugs only.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, NoReturn, TypeVar

import typer
from nats.aio.client import Client
from nats.errors import Error as NatsError
from pydantic import BaseModel, ValidationError

from hivectl.cli.output import OutputFormat, print_data, print_table, visible, write_out
from hivectl.core.bus import (
    BusError,
    NoAnswer,
    RemoteError,
    ask,
    connect_cli,
    connection_failure,
    read_reply,
)
from hivectl.core.codec import CodecError, describe_validation_error
from hivectl.core.config import ClientConfig, ConfigError, load_config
from hivectl.core.models import ID_PATTERN, Message
from hivectl.core.subjects import Subjects

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

T = TypeVar("T")
M = TypeVar("M", bound=Message)
B = TypeVar("B", bound=BaseModel)

# As `hivectl --help` says: 1 when the cluster says no, cannot be reached, or a job
# fails; 2 for a bad command line or configuration (click's code for usage errors).
# Whatever the command line alone shows to be wrong is refused before connecting.
EXIT_ERROR = 1
EXIT_USAGE = 2
_ID_RE = re.compile(ID_PATTERN)

# -- apps and options shared by commands -----------------------------------------------

APP_SETTINGS: dict[str, Any] = {
    "no_args_is_help": True,
    "rich_markup_mode": "markdown",  # help paragraphs reflow; examples go in ``` blocks
    "pretty_exceptions_show_locals": False,  # locals may hold credentials
    "context_settings": {"help_option_names": ["-h", "--help"]},
}


def noun_app(help: str) -> typer.Typer:
    """A Typer app for one noun (`node`, `job`, ...), with hivectl's common settings."""
    return typer.Typer(help=help, **APP_SETTINGS)


OutputOption = Annotated[
    OutputFormat | None,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="Output format: table, wide (more columns), json or yaml (complete records). "
        "Default: `output` in the config file, else table.",
        show_default=False,
    ),
]
NoHeadersOption = Annotated[
    bool, typer.Option("--no-headers", help="Leave out the header line of table and wide output.")
]


@dataclass
class GlobalOptions:
    """The root options, kept on the root context's `obj`; the config loads lazily."""

    config_file: Path | None = None
    nats_url: str | None = None
    timeout: str | None = None
    verbose: bool = False
    config: ClientConfig | None = field(default=None, repr=False)


def global_options(ctx: typer.Context) -> GlobalOptions:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


def client_config(ctx: typer.Context) -> ClientConfig:
    """The client config from its layers: flags > HIVE_* env > TOML file > defaults."""
    opts = global_options(ctx)
    if opts.config is None:
        try:
            opts.config = load_config(
                ClientConfig,
                opts.config_file,
                nats={"url": opts.nats_url},
                timeout=opts.timeout,
            )
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
    return opts.config


def output_format(ctx: typer.Context, given: OutputFormat | None) -> OutputFormat:
    """`-o` when given, else the config's default output."""
    return given if given is not None else OutputFormat(client_config(ctx).output)


# -- messages --------------------------------------------------------------------------


def stderr_console() -> Console:
    """Messages, progress and errors: stderr, so stdout stays data."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def escape(text: str) -> str:
    """`text` with rich markup made literal and control characters shown as escapes."""
    from rich.markup import escape as rich_escape

    return rich_escape(visible(text))


def say(text: str, *, error: bool = False, dim: bool = False) -> None:
    """One message on stderr: styled by rich on a terminal, plain text anywhere else.

    rich costs 45 ms of imports, more than the rest of a `node list`; a script that
    reads stderr gets the same words without them.
    """
    if not sys.stderr.isatty():
        lines = "\n".join(visible(line) for line in text.split("\n"))  # no raw controls
        sys.stderr.write(f"{'Error: ' if error else ''}{lines}\n")
        sys.stderr.flush()
        return
    markup = f"[dim]{escape(text)}[/]" if dim else escape(text)
    stderr_console().print(f"[bold red]Error:[/] {markup}" if error else markup)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print `Error: <message>` (one line) on stderr and exit with `code`."""
    say(" ".join(message.split()), error=True)  # one line, whatever the reason held
    raise typer.Exit(code)


def info(message: str) -> None:
    """A note for the person at the terminal (stderr)."""
    say(message)


@dataclass(frozen=True)
class Listing(Generic[T]):
    """How a `list` command shows its items: columns, and one row per item."""

    noun: str  # plural, for "No <noun> found."
    columns: Sequence[str]
    wide_columns: Sequence[str]
    row: Callable[[T, bool, datetime], list[str]]  # (item, wide?, now) -> cells

    def show(self, items: Sequence[T], fmt: OutputFormat, *, no_headers: bool) -> None:
        """The items as JSON/YAML records, as a table, or a note that there are none."""
        if fmt.is_data:
            print_data(items, fmt)
        elif not items:
            info(f"No {self.noun} found.")
        else:
            wide = fmt is OutputFormat.WIDE
            now = datetime.now(UTC)
            rows = [self.row(item, wide, now) for item in items]
            headers = self.wide_columns if wide else self.columns
            print_table(headers, rows, no_headers=no_headers)


def debug(ctx: typer.Context, message: str) -> None:
    """A `-v` detail (stderr)."""
    if global_options(ctx).verbose:
        say(message, dim=True)


def print_ok() -> None:
    """What approve/reject/delete and similar commands print when they worked."""
    write_out("Ok")


SPINNER_DELAY = 0.5  # seconds of work before a spinner shows: quick commands show none


class _Status:
    """A spinner and a line of text on stderr, shown once the work has taken
    SPINNER_DELAY: a command that answers at once neither flickers nor imports rich."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._lock = threading.Lock()
        self._shown: Status | None = None
        self._closed = False
        self._timer = threading.Timer(SPINNER_DELAY, self._show)
        self._timer.daemon = True
        self._timer.start()

    def _show(self) -> None:
        with self._lock:
            if not self._closed:
                self._shown = stderr_console().status(escape(self._text))
                self._shown.start()

    def update(self, text: str) -> None:
        with self._lock:
            self._text = text
            if self._shown is not None:
                self._shown.update(escape(text))

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            if self._shown is not None:
                self._shown.stop()


@contextmanager
def status_line(text: str) -> Iterator[Callable[[str], None]]:
    """A spinner with `text` while the block runs, only when stderr is a terminal;
    yields a function that changes the text."""
    if not sys.stderr.isatty():
        yield lambda _text: None
        return
    status = _Status(text)
    try:
        yield status.update
    finally:
        status.close()


@contextmanager
def spinner(text: str) -> Iterator[None]:
    """Like `status_line`, with a text that stays."""
    with status_line(text):
        yield


# -- validation ------------------------------------------------------------------------


class CliError(Exception):
    """An expected failure found inside `run_api` work: reported as one line."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def make(model: type[M], **fields: object) -> M:
    """A request model from command-line values; a value it refuses is a one-line error."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        fail(f"invalid {model.kind} request: {describe_validation_error(exc)}", EXIT_USAGE)


def build(model: type[B], data: object, what: str) -> B:
    """Any model (a job spec, say) from user data; a refusal is `invalid <what>: ...`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fail(f"invalid {what}: {describe_problem(exc)}", EXIT_USAGE)


def describe_problem(exc: ValidationError) -> str:
    """The first problem as `field.path: what is wrong` (no path for whole-model checks)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    text = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {text}{more}" if where else f"{text}{more}"


def check_id(value: str, what: str = "node") -> str:
    """A syntactically valid id or id prefix, else a one-line error."""
    if not _ID_RE.match(value):
        fail(
            f"invalid {what} id {value!r}: use lowercase letters, digits, '-' and '_' "
            "(up to 63, starting with a letter or digit); a unique prefix is enough",
            EXIT_USAGE,
        )
    return value


def check_selector(text: str | None) -> str:
    """A label selector that parses, else a one-line error; '' when none was given."""
    if not text:
        return ""
    from hivectl.core.selectors import SelectorError, parse_selector

    try:
        parse_selector(text)
    except SelectorError as exc:
        fail(f"invalid selector: {exc}", EXIT_USAGE)
    return text


# -- talking to the requester ----------------------------------------------------------


class Api:
    """One open connection to NATS and the requester's API on it."""

    def __init__(self, ctx: typer.Context, nc: Client, cfg: ClientConfig) -> None:
        self.ctx = ctx
        self.nc = nc
        self.cfg = cfg
        self.subjects = Subjects(cfg.nats.prefix)

    async def call(self, noun: str, verb: str, message: Message, expect: type[M]) -> M:
        """One request to `<prefix>.api.<noun>.<verb>`; errors raise, `run_api` reports."""
        return self.read(noun, verb, await self.ask(noun, verb, message), expect)

    async def ask(self, noun: str, verb: str, message: Message) -> bytes:
        """The request alone: the reply's bytes, for `read` (paging peeks in between)."""
        subject = self.subjects.api(noun, verb)
        started = time.perf_counter()
        data = await ask(self.nc, subject, message, timeout=self.cfg.timeout)
        elapsed = (time.perf_counter() - started) * 1000
        debug(self.ctx, f"{subject} {message.kind}: {len(data)} bytes in {elapsed:.1f}ms")
        return data

    def read(self, noun: str, verb: str, data: bytes, expect: type[M]) -> M:
        return read_reply(self.subjects.api(noun, verb), data, expect)


def run_api(
    ctx: typer.Context, work: Callable[[Api], Awaitable[T]], *, status: str | None = None
) -> T:
    """Connect, run `work`, close; expected failures become one-line errors."""
    cfg = client_config(ctx)
    try:
        with spinner(status) if status else nullcontext():
            return asyncio.run(_connected(ctx, cfg, work))
    except BusError as exc:
        from hivectl.cli.problems import explain

        fail(*explain(exc, global_options(ctx), cfg))
    except RemoteError as exc:
        detail = f" ({exc.code})" if global_options(ctx).verbose else ""
        fail(f"{exc.reason or exc.code}{detail}")
    except CodecError as exc:
        fail(f"unreadable reply from the requester: {exc.reason}")
    except CliError as exc:
        fail(str(exc), exc.code)


async def _connected(
    ctx: typer.Context, cfg: ClientConfig, work: Callable[[Api], Awaitable[T]]
) -> T:
    debug(ctx, f"connecting to {cfg.nats.url}")
    api = Api(ctx, await connect_cli(cfg.nats), cfg)
    try:
        return await work(api)
    except (NatsError, NoAnswer) as exc:
        # Whatever the wait was (a reply, the next log line, a job's end), a connection
        # that broke under it is one line, the same for every command.
        if isinstance(exc, NoAnswer) and not api.nc.is_closed:
            raise
        raise BusError(connection_failure(cfg.nats.url, exc, closed=api.nc.is_closed)) from None
    finally:
        with suppress(NatsError, OSError):  # closing a broken connection is no news
            await api.nc.close()  # the work may have connected again (a retried submit)


def call(ctx: typer.Context, noun: str, verb: str, message: Message, expect: type[M]) -> M:
    """A single request/reply with the requester."""

    async def work(api: Api) -> M:
        return await api.call(noun, verb, message, expect)

    return run_api(ctx, work)
