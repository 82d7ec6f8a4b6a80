"""What every `hivectl` noun shares: app settings, global options and config,
messages and spinners on stderr, and the checks of command-line values.

A noun module builds its own `typer.Typer` with `noun_app` and, in each command:

    cfg = client_config(ctx)                       # loads once; config errors exit 2

Talking to the requester (`call`, `run_api`, `Api`) is in `hivectl.cli.api`. Every
expected failure (a bad config, selector, id or request) ends the program with one line
`Error: ...` on stderr and a non-zero exit status; tracebacks are for bugs only.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from hivectl.cli.output import OutputFormat, print_data, print_table, visible, write_out
from hivectl.core.codec import describe_validation_error
from hivectl.core.config import ClientConfig, ConfigError, load_config
from hivectl.core.models import ID_PATTERN, Message

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
