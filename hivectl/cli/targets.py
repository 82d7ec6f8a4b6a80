"""Which nodes a command changes: ids and/or a label selector, confirmed when several.

Every `hivectl node` command that changes nodes (approve, reject, label; cordon,
uncordon, drain, prune) takes node ids, `-l SELECTOR`, or both (their union), and
`--yes`. It calls `select_nodes` to get the exact node ids, then `act_on_nodes` to send
one request per node:

    @app.command("cordon")
    def cordon(
        ctx: typer.Context,
        node_ids: NodeIdsArgument = None,
        selector: TargetSelectorOption = None,
        yes: YesOption = False,
    ) -> None:
        ids = select_nodes(ctx, node_ids, selector, verb="cordon", yes=yes)

        async def one(api: Api, node_id: str) -> str:
            await api.call("node", "cordon", NodeCordonRequest(id=node_id), OkReply)
            return ""  # or a note for the operator about this node (stderr)

        act_on_nodes(ctx, ids, one)

`select_nodes` looks the ids up (`node get`, so prefixes resolve and unknown ids fail
before anything changes) and lists the selector's nodes (`node list -l`, which matches
the merged labels); the requester itself is never a target. When more than one node is
chosen it lists them on stderr and asks on the terminal; `--yes` skips that; without a
terminal and without `--yes` it refuses, so a script never hangs on a prompt. Nothing
chosen is an error (exit 1). A single id given alone is passed on as typed, without a
look-up: the requester resolves its prefix, as before selectors existed.

`act_on_nodes` sends the requests over one connection, a few at a time, and prints
`Ok` (one node) or `<id>: Ok` per node on stdout; a node the requester refuses is an
`Error: <id>: <reason>` line on stderr, the others go on, and the exit status is 1.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

import typer

from hivectl.cli.api import Api, CliError, run_api
from hivectl.cli.common import (
    EXIT_ERROR,
    EXIT_USAGE,
    check_id,
    check_selector,
    fail,
    info,
    say,
)
from hivectl.cli.output import NONE, join_labels, plain_lines, write_out
from hivectl.core.api import NodeGetReply, NodeGetRequest, NodeListReply, NodeListRequest, NodeView
from hivectl.core.bus import RemoteError
from hivectl.core.labels import without_reserved
from hivectl.core.models import NodeType

IN_FLIGHT = 16  # requests at once when acting on many nodes
SHOWN = 50  # nodes listed before a confirmation; the rest are counted

NodeIdsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ID",
        help="Node ids, or unique prefixes of them.",
        show_default=False,
    ),
]
TargetSelectorOption = Annotated[
    str | None,
    typer.Option(
        "--selector",
        "-l",
        metavar="SELECTOR",
        help="Also every node whose labels match: k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', "
        "k or !k, comma-separated (all must match).",
        show_default=False,
    ),
]
YesOption = Annotated[
    bool,
    typer.Option("--yes", "-y", help="Change several nodes without asking first (for scripts)."),
]

# (open API, node id) -> a note for the operator about that node, or ""
Action = Callable[[Api, str], Awaitable[str]]


def select_nodes(
    ctx: typer.Context,
    ids: Sequence[str] | None,
    selector: str | None,
    *,
    verb: str,
    yes: bool,
    keep: Callable[[NodeView], bool] | None = None,
    everything: bool = False,
) -> list[str]:
    """The ids of the nodes to `verb`, sorted, confirmed by the operator when several.

    `ids`: node ids or prefixes; `selector`: a label selector; the nodes of both count.
    `verb` ("approve", "cordon") is said in the prompt and in errors. `keep`: only the
    nodes it returns True for (the ids' nodes too). `everything`: no ids and no selector
    mean every node (as `prune` wants) instead of an error.
    Exits with a one-line error when nothing is named (2), an id is unknown or names the
    requester, nothing is chosen, or the operator does not confirm (1).
    """
    ids = [check_id(node_id) for node_id in ids or []]
    selector = check_selector(selector)
    if not ids and not selector and not everything:
        fail(f"say which nodes to {verb}: give node ids, -l SELECTOR, or both", EXIT_USAGE)
    if len(ids) == 1 and not selector and keep is None:
        return ids
    nodes = run_api(
        ctx, lambda api: _resolve(api, ids, selector, verb, everything), status="Finding nodes"
    )
    chosen = [node for node in nodes if keep is None or keep(node)]
    if not chosen:
        fail(_nothing(verb, ids, selector, len(nodes)))
    if len(chosen) > 1 and not yes:
        _confirm(chosen, verb)
    return [node.node_id for node in chosen]


async def _resolve(
    api: Api, ids: list[str], selector: str, verb: str, everything: bool
) -> list[NodeView]:
    """The nodes the ids name and the selector matches, by id, the requester left out."""
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def get(node_id: str) -> NodeView:
        async with limit:
            return (await api.call("node", "get", NodeGetRequest(id=node_id), NodeGetReply)).node

    found = {node.node_id: node for node in await asyncio.gather(*map(get, ids))}
    for node in found.values():
        if node.type is NodeType.REQUESTER:
            raise CliError(f"cannot {verb} {node.node_id}: it is the requester, not a compute node")
    if selector or (everything and not ids):
        query = NodeListRequest(selector=selector)
        for page in await api.pages("node", query, NodeListReply):
            found.update((n.node_id, n) for n in page.nodes if n.type is NodeType.COMPUTE)
    return [found[node_id] for node_id in sorted(found)]


def _nothing(verb: str, ids: list[str], selector: str, found: int) -> str:
    """Why no node is left to act on (ids always find theirs, or fail earlier)."""
    if found:
        asked = " and ".join([*([f"-l {selector!r}"] if selector else []), *ids]) or "all"
        return f"no node to {verb}: none of the {found} nodes found ({asked}) qualifies"
    if selector:
        return f"no node to {verb}: no compute node matches -l {selector!r}"
    return f"no node to {verb}: the cluster has no compute nodes"


def _confirm(nodes: list[NodeView], verb: str) -> None:
    """List the nodes on stderr; go on only if the operator at the terminal says yes."""
    rows = [["ID", "APPROVAL", "STATUS", "LABELS"]]
    rows += [[n.node_id, n.approval.value, n.health.value, _labels(n)] for n in nodes[:SHOWN]]
    lines = [f"This will {verb} {len(nodes)} nodes:"]
    lines += ["  " + line for line in plain_lines(rows)]
    if len(nodes) > SHOWN:
        lines.append(f"  ... and {len(nodes) - SHOWN} more")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    if not sys.stdin.isatty():
        fail(
            f"not going to {verb} {len(nodes)} nodes without confirmation, and there is no "
            "terminal to ask on: add --yes (-y) to go ahead"
        )
    if not typer.confirm(f"{verb.capitalize()} these {len(nodes)} nodes?", err=True):
        fail("cancelled: no node was changed", EXIT_ERROR)


def _labels(node: NodeView) -> str:
    labels = node.labels or (node.info.labels if node.info else {})
    return join_labels(without_reserved(labels)) if labels else NONE


def act_on_nodes(ctx: typer.Context, ids: Sequence[str], act: Action) -> None:
    """`act` for each node over one connection; `Ok` per node, a failed node's error on
    stderr (the others go on) and exit status 1 when any failed."""
    if len(ids) == 1:  # one node: its error is the command's, as it always was
        note = run_api(ctx, lambda api: act(api, ids[0]))
        write_out("Ok")
        if note:
            info(note)
        return
    results = run_api(ctx, lambda api: _act_on_all(api, ids, act))
    failed = 0
    for node_id, (ok, text) in zip(ids, results, strict=True):
        if ok:
            write_out(f"{node_id}: Ok")
            if text:
                info(f"{node_id}: {text}")
        else:
            failed += 1
            say(f"{node_id}: {text}", error=True)
    if failed:
        fail(f"{failed} of {len(ids)} nodes were not changed")


async def _act_on_all(api: Api, ids: Sequence[str], act: Action) -> list[tuple[bool, str]]:
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def one(node_id: str) -> tuple[bool, str]:
        async with limit:
            try:
                return True, await act(api, node_id)
            except RemoteError as exc:  # this node refused; a lost connection ends them all
                return False, exc.reason or exc.code

    return list(await asyncio.gather(*map(one, ids)))
