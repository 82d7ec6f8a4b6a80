"""`hivectl usage`: what ran, for whom and where, as sreport and sacct would sum it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from hivectl.cli.api import call
from hivectl.cli.common import (
    APP_SETTINGS,
    EXIT_USAGE,
    Listing,
    NoHeadersOption,
    OutputOption,
    fail,
    info,
    make,
    output_format,
)
from hivectl.cli.output import print_data
from hivectl.core.config import parse_duration

if TYPE_CHECKING:  # imported by the command: `hivectl --help` need not build them
    from hivectl.core.usage import UsageRow

HELP = """Usage accounting: executions that ended, summed per user (or node).

For each group: executions by how they ended, wall time, and the requested CPU,
memory and GPUs multiplied by wall time (CPU TIME is core-seconds, as sreport's CPU
minutes; MEM is GiB x time); CPU USED is what the nodes measured (process and docker
jobs), and counts only the executions a node measured. An execution counts in the hour
it ended; `--since` is applied to the hour.

**Examples**

```
hivectl usage                        # per user, everything kept (90 days)
hivectl usage --since 7d --by node   # per node, the last week
hivectl usage --user alice --since 2026-11-01 -o json
```
"""

app = typer.Typer(help=HELP, invoke_without_command=True, **APP_SETTINGS)

COLUMNS = ["USER", "EXECS", "COMPLETED", "FAILED", "NODE-FAILED", "LOST", "WALL"]
COLUMNS += ["CPU TIME", "CPU USED", "MEM GiB·TIME", "GPU TIME"]
WIDE_COLUMNS = [*COLUMNS[:6], "CANCELLED", *COLUMNS[6:], "MEASURED"]
_DATE = re.compile(r"^\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d)?)?$")


@app.callback()
def usage(
    ctx: typer.Context,
    user: Annotated[
        str, typer.Option("--user", "-u", metavar="USER", help="Only this user's.")
    ] = "",
    node: Annotated[
        str, typer.Option("--node", "-n", metavar="NODE", help="Only this node's (id or prefix).")
    ] = "",
    since: Annotated[
        str,
        typer.Option(
            "--since",
            "-S",
            metavar="WHEN",
            help="Ended since: a duration back from now (12h, 7d) or a date (2026-11-01, UTC).",
        ),
    ] = "",
    by: Annotated[
        str, typer.Option("--by", metavar="GROUP", help="Group rows by user, node, or user,node.")
    ] = "user",
    output: OutputOption = None,
    no_headers: NoHeadersOption = False,
) -> None:
    """Sum the usage of ended executions (see `hivectl usage --help`)."""
    from hivectl.core.usage import UsageBy, UsageReportReply, UsageReportRequest

    if ctx.invoked_subcommand is not None:
        return
    try:
        grouping = UsageBy(by.replace(" ", ""))
    except ValueError:
        fail(f"invalid --by {by!r}: expected user, node or user,node", EXIT_USAGE)
    start = parse_since(since) if since else None
    request = make(UsageReportRequest, user=user, node=node, since=start, by=grouping)
    fmt = output_format(ctx, output)
    reply = call(ctx, "usage", "report", request, UsageReportReply)
    if fmt.is_data:
        print_data(reply, fmt)
        return
    listing = _listing(grouping)
    listing.show(reply.rows, fmt, no_headers=no_headers)
    if reply.truncated:
        info(f"(only the first {len(reply.rows)} groups shown: narrow with --user or --node)")


def parse_since(text: str) -> datetime:
    """A moment from `--since`: a duration back from now, or a UTC date (and time)."""
    if _DATE.match(text):
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    try:
        seconds = float(parse_duration(text))
    except ValueError:
        fail(f"invalid --since {text!r}: expected a duration (7d, 12h) or a date", EXIT_USAGE)
    return datetime.now(UTC) - timedelta(seconds=seconds)


def _listing(by: object) -> Listing[UsageRow]:
    from hivectl.core.usage import UsageBy

    first = {UsageBy.USER: ["USER"], UsageBy.NODE: ["NODE"], UsageBy.USER_NODE: ["USER", "NODE"]}
    lead = first[by]  # type: ignore[index]

    def row(r: UsageRow, wide: bool, now: datetime) -> list[str]:
        names = {"USER": r.user, "NODE": r.node}
        cells = [names[c] for c in lead] + [str(r.executions), str(r.completed), str(r.failed)]
        cells += [str(r.node_failed), str(r.lost)] + ([str(r.cancelled)] if wide else [])
        used = duration(r.measured_cpu_seconds) if r.measured_executions else "-"
        cells += [duration(r.wall_seconds), duration(r.cpu_seconds), used]
        cells += [duration(r.memory_gib_seconds), duration(r.gpu_seconds)]
        return cells + ([str(r.measured_executions)] if wide else [])

    return Listing("usage", lead + COLUMNS[1:], lead + WIDE_COLUMNS[1:], row)


def duration(seconds: float) -> str:
    """`42.0s`, `12.5m`, `3.25h`: short, and precise enough to compare at a glance."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.2f}h"
