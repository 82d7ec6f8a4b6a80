"""`hivectl node label`: set and remove operator labels, by id or selector."""

from __future__ import annotations

from typing import Annotated

import typer

from hivectl.cli.api import Api
from hivectl.cli.common import EXIT_USAGE, fail, make
from hivectl.cli.targets import TargetSelectorOption, YesOption, act_on_nodes, select_nodes
from hivectl.core.api import NodeLabelReply, NodeLabelRequest
from hivectl.core.labels import LabelEditError, looks_like_edit, parse_edits

ArgsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ID... KEY=VALUE|KEY-",
        help="Node ids (or unique prefixes), then the changes: KEY=VALUE sets an operator "
        "label, KEY- removes one.",
        show_default=False,
    ),
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Let KEY=VALUE change an operator label the node already has. Without it that "
        "node is left as it is, with an error.",
    ),
]
MessageOption = Annotated[
    str,
    typer.Option("--message", "-m", metavar="REASON", help="Why: kept with the node's event."),
]


def label(
    ctx: typer.Context,
    args: ArgsArgument = None,
    selector: TargetSelectorOption = None,
    overwrite: OverwriteOption = False,
    message: MessageOption = "",
    yes: YesOption = False,
) -> None:
    """Set or remove operator labels: kept by the requester, they win over the labels a
    node reports itself, survive its restarts, and the node cannot change them.

    Jobs' constraints and `node list -l` match the merged labels: Hive's own (`hive.io/os`,
    `hive.io/arch`, `hive.io/hostname`, `hive.io/gpu-model`), then the node's, then the
    operator's. `hive.io/` labels cannot be set. Removing a label the operator has not set
    changes nothing (a node's own labels are changed in its config).

    **Examples**

    ```
    hivectl node label node-1 pool=gpu
    hivectl node label node-1 node-2 pool=batch tier-     # set pool, remove tier
    hivectl node label node-1 pool=cpu --overwrite
    hivectl node label -l 'zone in (a,b)' rack=r1 --yes   # every matching node
    ```
    """
    args = args or []
    ids = [arg for arg in args if not looks_like_edit(arg)]
    try:
        edit = parse_edits(arg for arg in args if looks_like_edit(arg))
    except LabelEditError as exc:
        fail(str(exc), EXIT_USAGE)
    if not edit:
        fail("no label changes given: KEY=VALUE sets a label, KEY- removes one", EXIT_USAGE)
    query = make(
        NodeLabelRequest,
        id="any",  # each node's id is set below (and checked by select_nodes)
        labels=edit.set,
        remove=edit.remove,
        overwrite=overwrite,
        reason=message,
    )
    targets = select_nodes(ctx, ids, selector, verb="label", yes=yes)

    async def one(api: Api, node_id: str) -> str:
        request = query.model_copy(update={"id": node_id})
        return unchanged(await api.call("node", "label", request, NodeLabelReply))

    act_on_nodes(ctx, targets, one)


def unchanged(reply: NodeLabelReply) -> str:
    """A note for each label asked to be removed that the operator had not set."""
    notes = []
    for key in reply.not_set:
        note = f"no operator label {key!r} to remove"
        if key in reply.labels:
            note += f" ({key}={reply.labels[key]} is the node's own: change it in its config)"
        notes.append(note)
    return "; ".join(notes)
