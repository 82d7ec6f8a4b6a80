"""`hivectl node cordon|uncordon|drain`: take nodes out of service and put them back.

Also what `node list` and `node describe` show of it: the STATUS cell (`HEALTHY,cordoned`,
as kubectl shows `Ready,SchedulingDisabled`), its filter words, and the drain lines.
Commands that name several nodes resolve every id first, so a bad one changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer

from hivectl.cli.api import Api, run_api
from hivectl.cli.common import EXIT_USAGE, fail, info, make, print_ok
from hivectl.cli.output import counted, timestamp, write_out
from hivectl.cli.targets import NodeIdsArgument, TargetSelectorOption, YesOption, select_nodes
from hivectl.core.api import (
    NodeCordonRequest,
    NodeDrainRequest,
    NodeGetReply,
    NodeGetRequest,
    NodeUncordonRequest,
    NodeView,
)
from hivectl.core.models import Drain, Health, OkReply

WATCH_EVERY = 0.5  # seconds between looks at a drain's progress
DEFAULT_DEADLINE = "1h"  # as Nomad's node drain

ReasonOption = Annotated[
    str,
    typer.Option(
        "--message", "-m", metavar="REASON", help="Why: kept in the node's events and record."
    ),
]


# -- what list and describe show ---------------------------------------------------------


def status_cell(node: NodeView) -> str:
    """Health, then `,draining` or `,cordoned` when the node is out of service."""
    if node.draining:
        return f"{node.health.value},draining"
    return f"{node.health.value},cordoned" if node.cordoned else node.health.value


STATUS_WORDS = "HEALTHY, UNHEALTHY or UNKNOWN, and/or cordoned, draining or schedulable"


def status_filter(text: str | None) -> dict[str, object]:
    """`--filter-status` words (`healthy`, `healthy,cordoned`) as NodeListRequest fields;
    `cordoned` matches draining nodes too (a drain cordons)."""
    fields: dict[str, object] = {}
    for word in filter(None, (w.strip().lower() for w in (text or "").split(","))):
        if word.upper() in Health.__members__ and "health" not in fields:
            fields["health"] = Health(word.upper())
        elif word in ("cordoned", "schedulable") and "cordoned" not in fields:
            fields["cordoned"] = word == "cordoned"
        elif word == "draining":
            fields["draining"] = True
        else:
            fail(f"invalid --filter-status {text!r}: use {STATUS_WORDS}", EXIT_USAGE)
    return fields


def scheduling_lines(node: NodeView, now: datetime) -> list[str]:
    """The `Scheduling:` value and, when there was one, the node's last drain."""
    if not node.cordoned:
        lines = ["schedulable"]
    else:
        why = f" ({node.cordon_reason})" if node.cordon_reason else ""
        lines = [f"cordoned: no new executions{why}"]
    drain = node.drain
    if drain is not None:
        lines.append(drain_summary(drain, now))
        if drain.reason:
            lines.append(f"  reason: {drain.reason}")
    return lines


def drain_summary(drain: Drain, now: datetime) -> str:
    if not drain.active:
        moved = f"; {counted(drain.moved, 'execution')} moved" if drain.moved else ""
        return f"{ended_text(drain)} {timestamp(drain.ended_at, now)}{moved}"
    return f"draining since {timestamp(drain.started_at, now)}: {drain_progress(drain, now)}"


def ended_text(drain: Drain) -> str:
    """`drained` (it ran its course) or `drain cancelled`."""
    return "drained" if drain.outcome == "drained" else f"drain {drain.outcome}"


def drain_progress(drain: Drain, now: datetime) -> str:
    """`2 batch executions left, 1 moved; deadline in 40s`."""
    if drain.remaining is None:
        left = "counting its batch executions"
    else:
        left = f"{counted(drain.remaining, 'batch execution')} left"
    if drain.moved:
        left += f", {drain.moved} moved"
    if drain.deadline is None:
        return f"{left}; no deadline"
    if drain.force:
        return f"{left}; forced: moving them now"
    seconds = (drain.deadline - now).total_seconds()
    when = f"in {seconds:.0f}s" if seconds > 0 else "passed: moving them now"
    return f"{left}; deadline {when}"


# -- the commands ------------------------------------------------------------------------


def cordon(
    ctx: typer.Context,
    node_ids: NodeIdsArgument = None,
    selector: TargetSelectorOption = None,
    message: ReasonOption = "",
    yes: YesOption = False,
) -> None:
    """Cordon nodes: they get no new executions; what runs on them goes on.

    They stay cordoned (STATUS `HEALTHY,cordoned` in `node list`) until uncordoned.

    **Examples**

    ```
    hivectl node cordon node-1 -m "disk errors"
    hivectl node cordon node-1 node-2
    hivectl node cordon -l rack=r7 -m "rack power work"   # lists them, asks first
    ```
    """
    _change(ctx, NodeCordonRequest, "cordon", node_ids, selector, message, yes)


def uncordon(
    ctx: typer.Context,
    node_ids: NodeIdsArgument = None,
    selector: TargetSelectorOption = None,
    message: ReasonOption = "",
    yes: YesOption = False,
) -> None:
    """Put nodes back in service; a drain still going on ends (cancelled).

    **Example**

    ```
    hivectl node uncordon node-1 -m "disk replaced"
    hivectl node uncordon -l rack=r7 --yes
    ```
    """
    _change(ctx, NodeUncordonRequest, "uncordon", node_ids, selector, message, yes)


def _change(
    ctx: typer.Context,
    model: type[NodeCordonRequest | NodeUncordonRequest],
    verb: str,
    node_ids: list[str] | None,
    selector: str | None,
    message: str,
    yes: bool,
) -> None:
    """`verb` the nodes chosen (confirmed when several), with `message` as the reason."""
    make(model, id="any", reason=message)  # a bad reason fails before anything is asked
    ids = select_nodes(ctx, node_ids, selector, verb=verb, yes=yes)
    requests = [make(model, id=i, reason=message) for i in ids]
    _said_ok(run_api(ctx, lambda api: _each(api, verb, requests)))


def drain(
    ctx: typer.Context,
    node_ids: NodeIdsArgument = None,
    selector: TargetSelectorOption = None,
    deadline: Annotated[
        str,
        typer.Option(
            "--deadline",
            metavar="DURATION",
            help="How long batch work may run on before it is moved to other nodes: 30s, 10m, 2h.",
        ),
    ] = DEFAULT_DEADLINE,
    no_deadline: Annotated[
        bool, typer.Option("--no-deadline", help="Let batch work run as long as it takes.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Move the batch work to other nodes now.")
    ] = False,
    cancel: Annotated[
        bool, typer.Option("--cancel", help="Stop draining; the nodes stay cordoned.")
    ] = False,
    message: ReasonOption = "",
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Then show the progress until the drains end.")
    ] = False,
    monitor: Annotated[
        bool, typer.Option("--monitor", help="Only show the progress of drains going on.")
    ] = False,
    yes: YesOption = False,
) -> None:
    """Drain nodes: cordon them, then move their batch work to other nodes.

    Batch executions may finish until the deadline; then those left are stopped and
    placed elsewhere without using a retry. Ops jobs (one execution per node) are left
    running. The end of a drain is an event; the nodes stay cordoned until uncordoned.
    `--watch` (or `--monitor`, for drains already going on) shows the progress on
    stderr and exits 1 if a drain was cancelled.

    **Examples**

    ```
    hivectl node drain node-1 -m "kernel update" --watch
    hivectl node drain node-1 node-2 --deadline 10m
    hivectl node drain node-1 --force
    hivectl node drain node-1 --cancel       # stays cordoned
    hivectl node drain node-1 --monitor
    hivectl node drain -l 'zone=a,pool!=gpu' --deadline 30m --yes
    ```
    """
    if monitor:  # only looks: nothing to confirm
        _watch_drains(ctx, select_nodes(ctx, node_ids, selector, verb="monitor", yes=True))
        return
    seconds = None if no_deadline else _seconds(deadline)
    make(NodeDrainRequest, id="any", deadline=seconds, reason=message)
    ids = select_nodes(ctx, node_ids, selector, verb="drain", yes=yes)
    requests = [
        make(NodeDrainRequest, id=i, deadline=seconds, force=force, cancel=cancel, reason=message)
        for i in ids
    ]
    resolved = run_api(ctx, lambda api: _each(api, "drain", requests))
    _said_ok(resolved)
    if watch and not cancel:
        _watch_drains(ctx, resolved)


def _said_ok(ids: list[str]) -> None:
    """`Ok` for one node, `<id>: Ok` for each of several, as approve and label say it."""
    if len(ids) == 1:
        print_ok()
        return
    for node_id in ids:
        write_out(f"{node_id}: Ok")


def _seconds(text: str) -> float:
    from hivectl.core.config import parse_duration

    try:
        return float(parse_duration(text))
    except ValueError as exc:
        fail(f"invalid --deadline: {exc}", EXIT_USAGE)


OpRequest = NodeCordonRequest | NodeUncordonRequest | NodeDrainRequest


async def _each(api: Api, verb: str, requests: Sequence[OpRequest]) -> list[str]:
    """Every node resolved first (an unknown or ambiguous id changes nothing), then the
    verb sent for each; their full ids."""
    ids = [(await _get(api, r.id)).node_id for r in requests]
    for request, node_id in zip(requests, ids, strict=True):
        await api.call("node", verb, request.model_copy(update={"id": node_id}), OkReply)
    return ids


async def _get(api: Api, node_id: str) -> NodeView:
    return (await api.call("node", "get", NodeGetRequest(id=node_id), NodeGetReply)).node


def _watch_drains(ctx: typer.Context, ids: list[str]) -> None:
    """Progress lines on stderr until no drain goes on; exit 1 if one was cancelled."""
    ended = run_api(ctx, lambda api: _follow(api, ids, info))
    stopped = [n for n in ended if n.drain is None or n.drain.outcome != "drained"]
    if stopped:
        why = [f"{n.node_id} ({n.drain.outcome if n.drain else 'no drain'})" for n in stopped]
        fail(f"not drained: {', '.join(why)}")


async def _follow(api: Api, ids: list[str], say: Callable[[str], None]) -> list[NodeView]:
    shown: dict[str, str] = {}
    while True:
        nodes = [await _get(api, node_id) for node_id in ids]
        now = datetime.now(UTC)
        for node in nodes:
            line = f"{node.node_id}: {_progress_line(node, now)}"
            if shown.get(node.node_id) != line:
                shown[node.node_id] = line
                say(line)
        if not any(node.draining for node in nodes):
            return nodes
        await asyncio.sleep(WATCH_EVERY)


def _progress_line(node: NodeView, now: datetime) -> str:
    drain = node.drain
    if drain is None:
        return "not draining"
    if drain.active:
        return f"draining: {drain_progress(drain, now)}"
    moved = f" ({counted(drain.moved, 'execution')} moved to other nodes)" if drain.moved else ""
    return f"{ended_text(drain)}{moved}"


def register(app: typer.Typer) -> None:
    """Add the commands to the `node` app."""
    for command in (cordon, uncordon, drain):
        app.command(command.__name__)(command)
