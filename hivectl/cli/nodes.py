"""`hivectl node …`: list, describe, approve, reject, label and delete compute nodes;
enrollment tokens (`node token`, in tokens.py) and pruning (`node prune`, in nodeprune.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from hivectl.cli import nodeprune, tokens
from hivectl.cli.api import Api, call, run_api
from hivectl.cli.common import (
    Listing,
    NoHeadersOption,
    OutputOption,
    check_id,
    check_selector,
    make,
    noun_app,
    output_format,
    print_ok,
)
from hivectl.cli.nodeops import STATUS_WORDS, register, scheduling_lines, status_cell, status_filter
from hivectl.cli.output import (
    NONE,
    age,
    human_bytes,
    human_bytes_of,
    human_count,
    human_cpu,
    join_labels,
    plain_lines,
    print_data,
    timestamp,
    write_lines,
)
from hivectl.cli.targets import (
    NodeIdsArgument,
    TargetSelectorOption,
    YesOption,
    act_on_nodes,
    select_nodes,
)
from hivectl.core.api import (
    NodeApproveRequest,
    NodeDeleteRequest,
    NodeGetReply,
    NodeGetRequest,
    NodeListReply,
    NodeListRequest,
    NodeRejectRequest,
    NodeView,
)
from hivectl.core.labels import without_reserved
from hivectl.core.models import Approval, NodeInfo, NodeType, OkReply, Resources

app = noun_app(
    "Manage compute nodes: list and inspect them; approve, reject, label, cordon, drain, "
    "prune or delete them; enrollment tokens.\n\n"
    "New nodes join as PENDING and get no work until an operator (or an enrollment "
    "token) approves them. Ids may be shortened to any unique prefix; approve, reject, "
    "label, cordon, uncordon and drain also take -l SELECTOR, and ask before changing "
    "more than one node (--yes does not ask). Every change is an event (hivectl events)."
)

# The default table fits 80 columns for nodes with a few labels: TYPE (the requester is
# the one row without resources, listed first) and DISK wait for `-o wide`. LABELS come
# last, as kubectl's --show-labels has them, so a long label list widens its own row only.
COLUMNS = ["ID", "APPROVAL", "STATUS", "CPU", "MEMORY", "GPU", "LABELS"]
WIDE_COLUMNS = ["ID", "TYPE", "APPROVAL", "STATUS", "CPU", "MEMORY", "DISK", "GPU", "RELIAB"]
# REASON (why PENDING or REJECTED: free text) comes last of all, after the labels.
WIDE_COLUMNS += ["VERSION", "ARCH", "LAST HEARTBEAT", "LABELS", "REASON"]

IdArgument = Annotated[
    str,
    typer.Argument(metavar="ID", help="Node id, or a unique prefix of one.", show_default=False),
]

ApprovalFilter = Annotated[
    Approval | None,
    typer.Option(
        "--filter-approval",
        case_sensitive=False,
        metavar="STATE",
        help="Only nodes in this approval state: PENDING, APPROVED or REJECTED (any case).",
        show_default=False,
    ),
]
StatusFilter = Annotated[
    str | None,
    typer.Option(
        "--filter-status",
        metavar="STATUS",
        help=f"Only nodes with this status, comma-separated: {STATUS_WORDS} (any case).",
        show_default=False,
    ),
]
SelectorOption = Annotated[
    str | None,
    typer.Option(
        "--selector",
        "-l",
        metavar="SELECTOR",
        help="Only nodes whose labels match: k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', "
        "k (has the label) or !k (lacks it), comma-separated (all must match).",
        show_default=False,
    ),
]


# -- list ----------------------------------------------------------------------------


@app.command("list")
def list_nodes(
    ctx: typer.Context,
    output: OutputOption = None,
    no_headers: NoHeadersOption = False,
    filter_approval: ApprovalFilter = None,
    filter_status: StatusFilter = None,
    selector: SelectorOption = None,
) -> None:
    """List nodes, the requester first, then by id.

    Resources show as available/total (CPU cores, memory, disk, GPUs), `-` where the
    node has sent no resource report yet. STATUS is the health the requester sees from
    heartbeats: HEALTHY, UNHEALTHY (late) or UNKNOWN (gone, or not heard from since
    the requester started), then `,cordoned` or `,draining` for a node taken out of
    service (`hivectl node cordon`, `drain`).

    **Examples**

    ```
    hivectl node list
    hivectl node list --filter-approval pending
    hivectl node list -l 'zone=eu-1,gpu' -o wide
    hivectl node list --filter-status healthy -o json | jq -r '.[].node_id'
    hivectl node list --filter-status cordoned
    hivectl node list --no-headers | awk '{print $1}'
    ```
    """
    fmt = output_format(ctx, output)
    query = make(
        NodeListRequest,
        approval=filter_approval,
        selector=check_selector(selector),
        **status_filter(filter_status),
    )
    nodes = run_api(ctx, lambda api: fetch_all(api, query), status="Listing nodes")
    nodes.sort(key=lambda node: (node.type is not NodeType.REQUESTER, node.node_id))
    LISTING.show(nodes, fmt, no_headers=no_headers)


async def fetch_all(api: Api, query: NodeListRequest) -> list[NodeView]:
    """Every node the query matches, from every page."""
    pages = await api.pages("node", query, NodeListReply)
    return [node for page in pages for node in page.nodes]


def node_row(node: NodeView, wide: bool, now: datetime) -> list[str]:
    cpu, memory, disk, gpu = resource_cells(node, short=not wide)
    merged = merged_labels(node)
    labels = join_labels(merged if wide else without_reserved(merged))
    if not wide:
        return [node.node_id, node.approval.value, status_cell(node), cpu, memory, gpu, labels]
    return [
        node.node_id,
        node.type.value,
        node.approval.value,
        status_cell(node),
        *(cpu, memory, disk, gpu),
        f"{node.reliability.score:.2f}" if node.reliability else NONE,
        node.info.version if node.info else NONE,
        node.info.arch if node.info else NONE,
        age(node.last_heartbeat, now),
        labels,
        node.reason or NONE,
    ]


def merged_labels(node: NodeView) -> dict[str, str]:
    """The labels scheduling and `-l` see; a requester older than operator labels sends
    none, and then they are the node's own."""
    return node.labels or (node.info.labels if node.info else {})


def resource_cells(node: NodeView, *, short: bool = False) -> list[str]:
    """CPU, MEMORY, DISK, GPU as available/total (`short`: sizes as `df -h` has them)."""
    if node.type is NodeType.REQUESTER:  # runs no jobs: it has no capacity to show
        return [NONE] * 4
    if node.resources is not None:
        total: Resources | None = node.resources.total
        free: Resources | None = node.resources.available
    else:
        total, free = (node.info.total if node.info else None), None
    if total is None:
        return [NONE] * 4
    return [
        f"{human_cpu(free.cpu if free else None)}/{human_cpu(total.cpu)}",
        human_bytes_of(free.memory if free else None, total.memory, short=short),
        human_bytes_of(free.disk if free else None, total.disk, short=short),
        f"{human_count(free.gpu if free else None)}/{human_count(total.gpu)}",
    ]


LISTING = Listing("nodes", COLUMNS, WIDE_COLUMNS, node_row)


# -- describe ------------------------------------------------------------------------


@app.command("describe")
def describe(ctx: typer.Context, node_id: IdArgument, output: OutputOption = None) -> None:
    """Show everything known about one node: identity, approval, health, labels,
    system, resources, GPUs and times.

    **Examples**

    ```
    hivectl node describe node-1
    hivectl node describe node-1 -o yaml
    ```
    """
    from hivectl.cli import events

    fmt = output_format(ctx, output)
    query = make(NodeGetRequest, id=check_id(node_id))

    async def work(api: Api) -> tuple[NodeView, list[events.Event]]:
        node = (await api.call("node", "get", query, NodeGetReply)).node
        if fmt.is_data:
            return node, []
        return node, await events.recent_node_events(api, node.node_id)

    node, recent = run_api(ctx, work)
    if fmt.is_data:
        print_data(node, fmt)
    else:
        now = datetime.now(UTC)
        write_lines(describe_lines(node, now) + events.describe_lines(recent, now))


def describe_lines(node: NodeView, now: datetime) -> list[str]:
    """A `kubectl describe`-style view: `Key:  value` lines, then the sections."""
    from hivectl.core.auth import fingerprint  # here: nkeys is 8 ms of imports `list` skips

    node_info = node.info
    key = node.public_key
    fields: list[tuple[str, list[str]]] = [
        ("ID", [node.node_id]),
        ("Type", [node.type.value]),
        ("Approval", [node.approval.value]),
        *([("Reason", [node.reason])] if node.reason else []),
        ("Status", [node.health.value]),
        *([("Scheduling", scheduling_lines(node, now))] if node.type is NodeType.COMPUTE else []),
        ("Public key", [key or NONE]),
        ("Fingerprint", [fingerprint(key) if key else NONE]),
        ("Labels", join_labels(merged_labels(node)).split(",")),
        ("Node labels", own_label_lines(node)),
        ("Operator labels", join_labels(node.operator_labels).split(",")),
        ("Hostname", [node_info.hostname if node_info else NONE]),
        ("Arch", [node_info.arch if node_info else NONE]),
        ("OS", [node_info.os if node_info else NONE]),
        ("Version", [node_info.version if node_info else NONE]),
        ("Executors", executor_lines(node_info)),
        ("Max executions", [execution_limit(node)]),
        *([("Reliability", [reliability_text(node)])] if node.type is NodeType.COMPUTE else []),
    ]
    lines = _field_lines(fields)
    lines += ["Resources:", *_indent(resource_table(node))]
    lines += ["GPUs:", *_indent(gpu_table(node))]
    score = f"{node_info.benchmark_score:g}" if node_info else NONE
    lines += _field_lines(
        [
            ("Benchmark score", [score]),
            ("Registered", [timestamp(node.registered_at, now)]),
            ("Updated", [timestamp(node.updated_at, now)]),
            ("Last heartbeat", [timestamp(node.last_heartbeat, now)]),
        ]
    )
    return lines


def reliability_text(node: NodeView) -> str:
    """`0.82 (2 completed, 0 failed by the node, 1 lost)`: the score placement uses."""
    record = node.reliability
    if record is None:
        return NONE
    counts = f"{record.completed} completed, {record.node_failed} failed by the node"
    return f"{record.score:.2f} ({counts}, {record.lost} lost)"


def own_label_lines(node: NodeView) -> list[str]:
    """The labels the node reports itself, each marked where an operator label wins."""
    own = node.info.labels if node.info else {}
    if not own:
        return [NONE]
    lines = []
    for key in sorted(own):
        wins = node.operator_labels.get(key, own[key])
        shadowed = f"  (operator: {key}={wins})" if wins != own[key] else ""
        lines.append(f"{key}={own[key]}{shadowed}")
    return lines


def executor_lines(node_info: NodeInfo | None) -> list[str]:
    """The executors a node offers, then each one it has enabled but cannot use, and why."""
    if node_info is None:
        return [NONE]
    usable = [", ".join(node_info.executors)] if node_info.executors else []
    missing = [f"{name}: unavailable ({why})" for name, why in node_info.unavailable.items()]
    return usable + missing or [NONE]


def execution_limit(node: NodeView) -> str:
    """How many executions the node runs at once at most (its max_executions)."""
    if node.type is NodeType.REQUESTER or node.info is None:
        return NONE
    limit = node.info.max_executions
    return str(limit) if limit else "no limit (resources only)"


def resource_table(node: NodeView) -> list[str]:
    if node.type is NodeType.REQUESTER:
        return ["<none: the requester runs no jobs>"]
    reported = node.resources
    total = reported.total if reported else node.info.total if node.info else None
    allocatable = reported.allocatable if reported else node.info.allocatable if node.info else None
    available = reported.available if reported else None
    if total is None:
        return ["<none reported>"]
    columns = (total, allocatable, available)
    rows = [["RESOURCE", "TOTAL", "ALLOCATABLE", "AVAILABLE"]]
    rows.append(["cpu", *(human_cpu(r.cpu) if r else NONE for r in columns)])
    rows.append(["memory", *(human_bytes(r.memory) if r else NONE for r in columns)])
    rows.append(["disk", *(human_bytes(r.disk) if r else NONE for r in columns)])
    rows.append(["gpu", *(str(r.gpu) if r else NONE for r in columns)])
    note = [] if reported else ["(no resource report yet: totals as the node registered them)"]
    return plain_lines(rows) + note


def gpu_table(node: NodeView) -> list[str]:
    gpus = node.info.gpus if node.info else []
    if not gpus:
        return ["<none>"]
    rows = [["INDEX", "MODEL", "MEMORY"]]
    rows += [[str(gpu.index), gpu.model, human_bytes(gpu.memory)] for gpu in gpus]
    return plain_lines(rows)


def _field_lines(fields: list[tuple[str, list[str]]]) -> list[str]:
    lines = []
    for name, values in fields:
        head = f"{name}:".ljust(17)
        lines.append(head + values[0])
        lines += [" " * 17 + value for value in values[1:]]
    return lines


def _indent(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]


# -- approve, reject, delete ---------------------------------------------------------


WhyOption = Annotated[
    str,
    typer.Option(
        "--message",
        "-m",
        metavar="REASON",
        help="Why: kept in the node's events (`hivectl events`).",
    ),
]


@app.command("approve")
def approve(
    ctx: typer.Context,
    node_ids: NodeIdsArgument = None,
    selector: TargetSelectorOption = None,
    message: WhyOption = "",
    yes: YesOption = False,
) -> None:
    """Approve nodes (PENDING or REJECTED -> APPROVED) so that they get work.

    **Examples**

    ```
    hivectl node approve node-1
    hivectl node approve node-1 node-2
    hivectl node approve -l zone=eu-1      # lists the nodes and asks first
    hivectl node approve -l zone=eu-1 --yes
    hivectl node approve node-1 -m "fingerprint checked"
    ```
    """
    query = make(NodeApproveRequest, id="any", reason=message)  # checked before asking
    ids = select_nodes(ctx, node_ids, selector, verb="approve", yes=yes)

    async def one(api: Api, node_id: str) -> str:
        await api.call("node", "approve", query.model_copy(update={"id": node_id}), OkReply)
        return ""

    act_on_nodes(ctx, ids, one)


@app.command("reject")
def reject(
    ctx: typer.Context,
    node_ids: NodeIdsArgument = None,
    selector: TargetSelectorOption = None,
    message: Annotated[
        str,
        typer.Option(
            "--message",
            "-m",
            metavar="REASON",
            help="Why: kept with the node and shown by `node describe`.",
        ),
    ] = "",
    yes: YesOption = False,
) -> None:
    """Reject nodes (-> REJECTED): they stay known but get no work until approved.

    **Examples**

    ```
    hivectl node reject node-3 -m "malicious node?"
    hivectl node reject node-3               # no reason given
    hivectl node reject 3f -m "not ours"     # a unique id prefix is enough
    hivectl node reject -l 'zone=lab' -m "lab machines stay out" --yes
    ```
    """
    # The reason is checked before anything is asked; each node's id is set below.
    query = make(NodeRejectRequest, id="any", reason=message)
    ids = select_nodes(ctx, node_ids, selector, verb="reject", yes=yes)

    async def one(api: Api, node_id: str) -> str:
        await api.call("node", "reject", query.model_copy(update={"id": node_id}), OkReply)
        return ""

    act_on_nodes(ctx, ids, one)


@app.command("delete")
def delete(ctx: typer.Context, node_id: IdArgument, message: WhyOption = "") -> None:
    """Delete a node's record. A running agent is ignored from then on; restarted, it
    registers again and comes back as PENDING.

    **Example**

    ```
    hivectl node delete node-1 -m "retired"
    ```
    """
    query = make(NodeDeleteRequest, id=check_id(node_id), reason=message)
    call(ctx, "node", "delete", query, OkReply)
    print_ok()


# Commands of this noun kept in modules of their own.
from hivectl.cli import nodelabels  # noqa: E402

app.command("label")(nodelabels.label)
app.add_typer(tokens.app, name="token")
app.command("prune")(nodeprune.prune)
register(app)  # cordon, uncordon, drain (hivectl.cli.nodeops)
