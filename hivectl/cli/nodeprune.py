"""`hivectl node prune`: delete the records of nodes UNKNOWN for longer than a threshold.

The requester lists them first; a person at a terminal confirms, a script says `--yes`.
Then only the nodes listed are removed, each checked again (one heard from meanwhile
stays). How long a node has been UNKNOWN is what the requester that answers has seen:
time it was down or had just started does not count (see requester/nodes/prune.py).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hivectl.cli.api import Api, run_api
from hivectl.cli.common import EXIT_ERROR, EXIT_USAGE, fail, info
from hivectl.cli.output import counted, plain_lines, print_table
from hivectl.core.api import NODE_PRUNE, NodePruneReply, NodePruneRequest, PruneCandidate
from hivectl.core.config import parse_duration

CHUNK = 200  # records removed per request: each reply comes well within the timeout


def prune(
    ctx: typer.Context,
    unknown_for: Annotated[
        str,
        typer.Option(
            "--unknown-for",
            metavar="DURATION",
            help="Remove nodes UNKNOWN at least this long: 30m, 24h, 7d.",
            show_default=False,
        ),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask: for scripts (no terminal).")
    ] = False,
    message: Annotated[
        str, typer.Option("--message", "-m", metavar="REASON", help="Why (kept in the events).")
    ] = "",
) -> None:
    """Delete the records of nodes UNKNOWN for at least DURATION (after a list and a
    confirmation). An agent still running elsewhere registers again, PENDING, when it
    restarts, as after `node delete`.

    The requester counts only time it has watched itself: after it restarts, no node is
    UNKNOWN for longer than it has run (less its `disconnected_after`).

    **Examples**

    ```
    hivectl node prune --unknown-for 24h
    hivectl node prune --unknown-for 7d --yes -m "decommissioned rack 7"
    ```
    """
    try:
        seconds = float(parse_duration(unknown_for))
    except ValueError as exc:
        fail(f"invalid --unknown-for: {exc}", EXIT_USAGE)
    query = NodePruneRequest(unknown_for=seconds, dry_run=True, reason=message)

    async def listing(api: Api) -> NodePruneReply:
        return await api.call("node", NODE_PRUNE, query, NodePruneReply)

    found = run_api(ctx, listing, status="Looking for UNKNOWN nodes")
    if not found.nodes:
        info(
            f"No node has been UNKNOWN for {unknown_for} (the requester that answered has "
            f"watched heartbeats for {_span(found.watching_for)})."
        )
        return
    _confirm(found, unknown_for, yes)

    async def removal(api: Api) -> list[PruneCandidate]:
        removed: list[PruneCandidate] = []
        ids = [node.node_id for node in found.nodes]
        for start in range(0, len(ids), CHUNK):
            chunk = query.model_copy(update={"dry_run": False, "ids": ids[start : start + CHUNK]})
            removed += (await api.call("node", NODE_PRUNE, chunk, NodePruneReply)).nodes
        return removed

    removed = run_api(ctx, removal, status="Pruning")
    if removed:
        print_table(["ID", "APPROVAL", "UNKNOWN FOR"], _rows(removed))
    stayed = len(found.nodes) - len(removed)
    back = f" ({counted(stayed, 'node')} heard from again meanwhile)" if stayed else ""
    info(f"Pruned {counted(len(removed), 'node')}{back}.")


def _confirm(found: NodePruneReply, unknown_for: str, yes: bool) -> None:
    """List what would go; go on with `--yes` or a 'y' typed at a terminal."""
    count = counted(len(found.nodes), "node")
    more = f" (and {found.more} more: prune again after)" if found.more else ""
    info(f"{count} UNKNOWN for at least {unknown_for}{more}:")
    for line in plain_lines([["ID", "APPROVAL", "UNKNOWN FOR"], *_rows(found.nodes)]):
        info("  " + line)
    if yes:
        return
    if not sys.stdin.isatty():
        # As the target chooser does (exit 1): the command was valid, the answer is no.
        fail(f"not pruning {count} without confirmation: add --yes (no terminal)", EXIT_ERROR)
    if not typer.confirm(f"Prune {count}?", default=False, err=True):
        fail("nothing pruned", EXIT_ERROR)


def _rows(nodes: list[PruneCandidate]) -> list[list[str]]:
    return [[node.node_id, node.approval.value, _span(node.unknown_for)] for node in nodes]


def _span(seconds: float) -> str:
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}{_span(whole % size) if whole % size >= 60 else ''}"
    return f"{whole}s"
