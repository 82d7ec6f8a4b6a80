"""`hivectl node …` against a real nats-server and a canned requester.

The requester daemon is not used here: `CannedRequester` (below) subscribes to the
`hive.api.node.*` subjects with nats-py, records every request it decodes and answers
with replies built from the real models. It runs its own event loop in a thread, so
the CLI (which calls `asyncio.run`) can run in-process under `CliRunner`.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
import yaml
from nats.aio.msg import Msg
from typer.testing import CliRunner, Result

from hivectl.cli.main import mount
from hivectl.core import codec
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
from hivectl.core.auth import Identity, fingerprint
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import (
    Approval,
    ErrorReply,
    GpuInfo,
    Health,
    Message,
    NodeInfo,
    NodeResources,
    NodeType,
    OkReply,
    Resources,
)

app = mount()  # every noun, as `hivectl --help` sees them
GiB = 1024**3
NOW = datetime.now(UTC)
PUBLIC_KEY = Identity.generate().public_key
Handler = Callable[[Message], Message | None]


# -- the canned requester ------------------------------------------------------------


class CannedRequester:
    """Answers `hive.api.node.*` like the requester would, from canned data.

    `pages`: the node list, split into pages (`next` is the last id of a page).
    `errors`: a message kind -> ErrorReply to answer with instead.
    `handler`: replaces the canned behaviour entirely (return None: no answer).
    """

    def __init__(
        self,
        url: str,
        pages: list[list[NodeView]] | None = None,
        errors: dict[str, ErrorReply] | None = None,
        handler: Handler | None = None,
    ) -> None:
        self.url = url
        self.pages = pages if pages is not None else [sample_nodes()]
        self.errors = errors or {}
        self.handler = handler or self.answer
        self.requests: list[Message] = []
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="canned-requester", daemon=True)

    def __enter__(self) -> CannedRequester:
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("canned requester did not subscribe within 10s")
        if self._failure is not None:
            raise RuntimeError("canned requester failed to start") from self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by __enter__
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        nc = await nats.connect(self.url)
        await nc.subscribe("hive.api.node.*", cb=self._on_request)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    async def _on_request(self, msg: Msg) -> None:
        request: Message = codec.decode(msg.data)
        self.requests.append(request)  # before answering: the CLI sees it once it returns
        reply = self.handler(request)
        if reply is not None:
            await msg.respond(codec.encode(reply))

    def answer(self, request: Message) -> Message:
        if request.kind in self.errors:
            return self.errors[request.kind]
        if isinstance(request, NodeListRequest):
            return self.list_page(request.after)
        if isinstance(request, NodeGetRequest):
            found = [n for page in self.pages for n in page if n.node_id.startswith(request.id)]
            if len(found) != 1:
                return ErrorReply(code="not_found", reason=f"no node matches {request.id!r}")
            return NodeGetReply(node=found[0])
        assert isinstance(request, NodeApproveRequest | NodeRejectRequest | NodeDeleteRequest)
        return OkReply(id=request.id)

    def list_page(self, after: str) -> NodeListReply:
        index = 0 if not after else 1 + [p[-1].node_id for p in self.pages].index(after)
        page = self.pages[index]
        last = index == len(self.pages) - 1
        return NodeListReply(nodes=page, next="" if last else page[-1].node_id)

    def sent(self, kind: type[Message]) -> list[Message]:
        return [r for r in self.requests if isinstance(r, kind)]


# -- data ----------------------------------------------------------------------------


def compute_node(node_id: str, **changes: object) -> NodeView:
    total = Resources(cpu=8, memory=16 * GiB, disk=100 * GiB, gpu=1)
    node = NodeView(
        node_id=node_id,
        approval=Approval.APPROVED,
        health=Health.HEALTHY,
        public_key=PUBLIC_KEY,
        info=NodeInfo(
            hostname=f"{node_id}.example",
            arch="amd64",
            os="linux",
            version="0.1.0",
            labels={"zone": "eu-1", "gpu": "true"},
            executors=["docker", "process"],
            total=total,
            allocatable=Resources(cpu=7, memory=14 * GiB, disk=90 * GiB, gpu=1),
            gpus=[GpuInfo(index=0, model="NVIDIA A100", memory=80 * GiB)],
            benchmark_score=1234.5,
            max_executions=32,
        ),
        resources=NodeResources(
            total=total,
            allocatable=Resources(cpu=7, memory=14 * GiB, disk=90 * GiB, gpu=1),
            available=Resources(cpu=6.5, memory=int(12.3 * GiB), disk=80 * GiB, gpu=0),
        ),
        last_heartbeat=NOW - timedelta(hours=5),
        registered_at=NOW - timedelta(days=3),
        updated_at=NOW - timedelta(hours=1),
    )
    return node.model_copy(update=changes)


def sample_nodes() -> list[NodeView]:
    """Out of order on purpose: the CLI puts the requester first, then sorts by id."""
    pending = compute_node("node-b", approval=Approval.PENDING, health=Health.UNKNOWN)
    pending = pending.model_copy(update={"resources": None, "last_heartbeat": None})
    requester = NodeView(
        node_id="zz-requester",
        type=NodeType.REQUESTER,
        approval=Approval.APPROVED,
        health=Health.HEALTHY,
    )
    return [pending, compute_node("node-a"), requester]


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user config file or HIVE_* variable leaks into these tests."""
    empty = tmp_path / "hivectl.toml"
    empty.write_text("")
    monkeypatch.setenv("HIVE_CONFIG", str(empty))
    for name in ("HIVE_NATS__URL", "HIVE_TIMEOUT", "HIVE_OUTPUT", "HIVE_NATS__PREFIX"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def requester(nats_server: EmbeddedNats) -> Iterator[CannedRequester]:
    with CannedRequester(nats_server.url) as canned:
        yield canned


def hivectl(url: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["--nats-url", url, *args])


def table(text: str) -> list[list[str]]:
    """Plain table output split into cells (cells are separated by 3+ spaces)."""
    import re

    return [re.split(r" {3,}", line.strip()) for line in text.splitlines() if line.strip()]


def one_line_error(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


# -- node list -----------------------------------------------------------------------


def test_list_table_columns_values_and_order(requester: CannedRequester) -> None:
    result = hivectl(requester.url, "node", "list")
    assert result.exit_code == 0, result.stderr
    rows = table(result.stdout)
    assert rows[0] == ["ID", "APPROVAL", "STATUS", "CPU", "MEMORY", "GPU", "LABELS"]
    assert rows[1] == ["zz-requester", "APPROVED", "HEALTHY", "-", "-", "-", "-"]
    assert rows[2] == [
        "node-a",
        "APPROVED",
        "HEALTHY",
        "6.5/8",
        "12/16GiB",
        "0/1",
        "gpu=true,zone=eu-1",
    ]
    # No resource report yet: the total the node registered, nothing available.
    assert rows[3] == ["node-b", "PENDING", "UNKNOWN", "-/8", "-/16GiB", "-/1", rows[2][-1]]
    assert len(rows) == 4
    assert requester.sent(NodeListRequest) == [NodeListRequest()]


def test_list_wide_adds_type_disk_version_arch_and_heartbeat_age(
    requester: CannedRequester,
) -> None:
    result = hivectl(requester.url, "node", "list", "-o", "wide")
    assert result.exit_code == 0, result.stderr
    rows = table(result.stdout)
    assert rows[0] == [
        *["ID", "TYPE", "APPROVAL", "STATUS", "CPU", "MEMORY", "DISK", "GPU", "RELIAB"],
        *["VERSION", "ARCH", "LAST HEARTBEAT", "LABELS", "REASON"],
    ]
    assert rows[1][:2] == ["zz-requester", "Requester"]
    assert rows[1][-5:] == ["-", "-", "-", "-", "-"]
    assert rows[2][1] == "Compute"
    assert rows[2][5:7] == ["12.3/16.0GiB", "80.0/100.0GiB"]  # wide: one decimal
    assert rows[2][-5:] == ["0.1.0", "amd64", "5h ago", "gpu=true,zone=eu-1", "-"]
    assert rows[3][-5:] == ["0.1.0", "amd64", "-", "gpu=true,zone=eu-1", "-"]


def devstack_nodes() -> list[NodeView]:
    """What `hivectl devstack` lists (requester, node-1..3), plus a GPU machine with a
    few labels, as a 2-core laptop and a 16-core server report themselves."""
    laptop = Resources(cpu=2, memory=int(23.5 * GiB), disk=252 * GiB)
    idle = NodeResources(
        total=laptop,
        allocatable=laptop,
        available=Resources(cpu=2, memory=int(22.2 * GiB), disk=int(77.3 * GiB)),
    )
    plain = compute_node("node-1").info.model_copy(update={"labels": {}})  # type: ignore[union-attr]
    agents = [
        compute_node(f"node-{i}").model_copy(update={"info": plain, "resources": idle})
        for i in (1, 2, 3)
    ]
    server = Resources(cpu=16, memory=64 * GiB, disk=2048 * GiB, gpu=1)
    busy = NodeResources(
        total=server,
        allocatable=server,
        available=Resources(cpu=12.5, memory=int(40.2 * GiB), disk=1900 * GiB, gpu=0),
    )
    requester = NodeView(
        node_id="requester",
        type=NodeType.REQUESTER,
        approval=Approval.APPROVED,
        health=Health.HEALTHY,
    )
    return [requester, *agents, compute_node("gpu-1").model_copy(update={"resources": busy})]


def test_default_table_fits_80_columns(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """At an 80-column terminal (COLUMNS=80) `node list` fits; `-o wide` may not."""
    exe = Path(sys.executable).parent / "hivectl"
    env = {"PATH": str(exe.parent), "COLUMNS": "80", "HIVE_CONFIG": str(tmp_path / "hivectl.toml")}
    with CannedRequester(nats_server.url, pages=[devstack_nodes()]) as canned:
        argv = [str(exe), "--nats-url", canned.url, "node", "list"]
        listed = [
            subprocess.run([*argv, *more], capture_output=True, text=True, env=env, check=True)
            for more in ([], ["-o", "wide"])
        ]
    lines = listed[0].stdout.splitlines()
    ids = [line.split()[0] for line in lines]
    assert ids == ["ID", "requester", "gpu-1", "node-1", "node-2", "node-3"]
    assert lines[2].split()[3:] == ["12.5/16", "40/64GiB", "0/1", "gpu=true,zone=eu-1"]
    assert max(len(line) for line in lines) <= 80, listed[0].stdout
    assert max(len(line) for line in listed[1].stdout.splitlines()) > 80


def test_list_no_headers(requester: CannedRequester) -> None:
    result = hivectl(requester.url, "node", "list", "--no-headers")
    assert result.exit_code == 0, result.stderr
    assert [row[0] for row in table(result.stdout)] == ["zz-requester", "node-a", "node-b"]


def test_list_json_is_the_complete_records(requester: CannedRequester) -> None:
    result = hivectl(requester.url, "node", "list", "-o", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    by_id = {n.node_id: n.model_dump(mode="json") for n in sample_nodes()}
    assert data == [by_id["zz-requester"], by_id["node-a"], by_id["node-b"]]


def test_list_yaml_matches_json(requester: CannedRequester) -> None:
    as_yaml = hivectl(requester.url, "node", "list", "-o", "YAML")
    as_json = hivectl(requester.url, "node", "list", "-o", "json")
    assert as_yaml.exit_code == 0, as_yaml.stderr
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)


def test_list_sends_filters(requester: CannedRequester) -> None:
    args = ["--filter-approval", "pending", "--filter-status", "Healthy"]
    result = hivectl(requester.url, "node", "list", *args, "-l", "zone in (eu-1,eu-2),gpu")
    assert result.exit_code == 0, result.stderr
    (sent,) = requester.sent(NodeListRequest)
    assert isinstance(sent, NodeListRequest)
    assert sent.approval is Approval.PENDING
    assert sent.health is Health.HEALTHY
    assert sent.selector == "zone in (eu-1,eu-2),gpu"


def test_list_follows_every_page(nats_server: EmbeddedNats) -> None:
    nodes = [compute_node(f"node-{i:02d}") for i in range(9)]
    with CannedRequester(nats_server.url, pages=[nodes[:3], nodes[3:6], nodes[6:]]) as canned:
        result = hivectl(canned.url, "node", "list", "--no-headers")
    assert result.exit_code == 0, result.stderr
    assert [row[0] for row in table(result.stdout)] == [n.node_id for n in nodes]
    afters = [r.after for r in canned.sent(NodeListRequest) if isinstance(r, NodeListRequest)]
    assert afters == ["", "node-02", "node-05"]


def test_list_gives_up_on_a_requester_that_repeats_a_page(nats_server: EmbeddedNats) -> None:
    """A requester whose `next` never moves on must not keep hivectl asking forever."""
    nodes = [compute_node("node-00"), compute_node("node-01")]
    with CannedRequester(nats_server.url, pages=[nodes]) as canned:
        canned.handler = lambda request: NodeListReply(nodes=nodes, next="node-01")
        result = hivectl(canned.url, "node", "list")
    assert "sent the page after 'node-01' twice" in one_line_error(result)
    afters = [r.after for r in canned.sent(NodeListRequest) if isinstance(r, NodeListRequest)]
    assert afters == ["", "node-01"]


def test_list_empty(nats_server: EmbeddedNats) -> None:
    with CannedRequester(nats_server.url, pages=[[]]) as canned:
        result = hivectl(canned.url, "node", "list")
        as_json = hivectl(canned.url, "node", "list", "-o", "json")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No nodes found" in result.stderr
    assert json.loads(as_json.stdout) == []


def test_bad_selector_is_one_line_and_sends_nothing(requester: CannedRequester) -> None:
    line = one_line_error(hivectl(requester.url, "node", "list", "-l", "zone in (eu-1"), code=2)
    assert "invalid selector" in line
    assert requester.requests == []


def test_bad_filter_value_is_a_usage_error(requester: CannedRequester) -> None:
    result = hivectl(requester.url, "node", "list", "--filter-approval", "maybe")
    assert result.exit_code == 2
    assert requester.requests == []


def test_large_list_as_json_is_fast(nats_server: EmbeddedNats) -> None:
    nodes = [compute_node(f"n{i:05d}") for i in range(10_000)]
    pages = [nodes[i : i + 1000] for i in range(0, len(nodes), 1000)]
    with CannedRequester(nats_server.url, pages=pages) as canned:
        started = time.perf_counter()
        result = hivectl(canned.url, "node", "list", "-o", "json")
        elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)) == 10_000
    assert elapsed < 10, f"10,000 nodes as JSON took {elapsed:.1f}s"


# -- describe ------------------------------------------------------------------------


def test_describe_shows_every_section(requester: CannedRequester) -> None:
    result = hivectl(requester.url, "node", "describe", "node-a")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for expected in (
        "ID:              node-a",
        "Type:            Compute",
        "Approval:        APPROVED",
        "Status:          HEALTHY",
        f"Public key:      {PUBLIC_KEY}",
        f"Fingerprint:     {fingerprint(PUBLIC_KEY)}",
        "Labels:          gpu=true",
        "                 zone=eu-1",
        "Hostname:        node-a.example",
        "Executors:       docker, process",
        "Max executions:  32",
        "Benchmark score: 1234.5",
        "Last heartbeat:  ",
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"
    resources = table(out.split("Resources:")[1].split("GPUs:")[0])
    assert resources[0] == ["RESOURCE", "TOTAL", "ALLOCATABLE", "AVAILABLE"]
    assert resources[1] == ["cpu", "8", "7", "6.5"]
    assert resources[2] == ["memory", "16.0GiB", "14.0GiB", "12.3GiB"]
    assert table(out.split("GPUs:")[1])[1] == ["0", "NVIDIA A100", "80.0GiB"]
    (sent,) = requester.sent(NodeGetRequest)
    assert sent == NodeGetRequest(id="node-a")


def test_describe_says_when_only_resources_limit_a_node(nats_server: EmbeddedNats) -> None:
    node = compute_node("node-u")
    assert node.info is not None
    unlimited = node.model_copy(update={"info": node.info.model_copy(update={"max_executions": 0})})
    with CannedRequester(nats_server.url, pages=[[unlimited]]) as canned:
        result = hivectl(canned.url, "node", "describe", "node-u")
    assert "Max executions:  no limit (resources only)" in result.stdout


def test_describe_shows_the_reject_reason(nats_server: EmbeddedNats) -> None:
    node = compute_node("node-r", approval=Approval.REJECTED, reason="malicious node?")
    with CannedRequester(nats_server.url, pages=[[node]]) as canned:
        result = hivectl(canned.url, "node", "describe", "node-r")
    assert "Approval:        REJECTED" in result.stdout
    assert "Reason:          malicious node?" in result.stdout


def test_describe_before_the_first_resource_report(requester: CannedRequester) -> None:
    result = hivectl(requester.url, "node", "describe", "node-b")
    assert result.exit_code == 0, result.stderr
    resources = table(result.stdout.split("Resources:")[1].split("GPUs:")[0])
    assert resources[1] == ["cpu", "8", "7", "-"]
    assert resources[-1] == ["(no resource report yet: totals as the node registered them)"]
    assert "Last heartbeat:  -" in result.stdout


def test_verbose_goes_to_stderr_only(requester: CannedRequester) -> None:
    result = hivectl(requester.url, "-v", "node", "list", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)) == 3
    assert f"connecting to {requester.url}" in result.stderr
    assert re.search(r"hive.api.node.list node_list: \d+ bytes in [\d.]+ms", result.stderr)


def test_describe_json_and_yaml(requester: CannedRequester) -> None:
    expected = compute_node("node-a").model_dump(mode="json")
    as_json = hivectl(requester.url, "node", "describe", "node-a", "-o", "json")
    as_yaml = hivectl(requester.url, "node", "describe", "node-a", "-o", "yaml")
    assert json.loads(as_json.stdout) == expected
    assert yaml.safe_load(as_yaml.stdout) == expected


# -- approve, reject, delete ---------------------------------------------------------


def test_approve_reject_delete_print_ok(requester: CannedRequester) -> None:
    for args in (
        ["approve", "node-b"],
        ["reject", "node-3", "-m", "malicious node?"],
        ["delete", "node"],
    ):
        result = hivectl(requester.url, "node", *args)
        assert (result.exit_code, result.stdout) == (0, "Ok\n"), result.stderr
    assert requester.requests == [
        NodeApproveRequest(id="node-b"),
        NodeRejectRequest(id="node-3", reason="malicious node?"),
        NodeDeleteRequest(id="node"),
    ]


@pytest.mark.parametrize(
    ("args", "kind", "code", "reason"),
    [
        (["describe", "nope"], "node_get", "not_found", "no node matches 'nope'"),
        (["approve", "node"], "node_approve", "ambiguous", "'node' matches node-a, node-b"),
        (["reject", "x"], "node_reject", "not_found", "no node matches 'x'"),
        (["delete", "node"], "node_delete", "ambiguous", "'node' matches node-a, node-b"),
    ],
)
def test_error_replies_are_one_line(
    nats_server: EmbeddedNats, args: list[str], kind: str, code: str, reason: str
) -> None:
    errors = {kind: ErrorReply(code=code, reason=reason)}
    with CannedRequester(nats_server.url, errors=errors) as canned:
        line = one_line_error(hivectl(canned.url, "node", *args))
    assert line == f"Error: {reason}"


def test_invalid_id_is_refused_locally(requester: CannedRequester) -> None:
    line = one_line_error(hivectl(requester.url, "node", "describe", "A.B"), code=2)
    assert "invalid node id 'A.B'" in line
    assert requester.requests == []


# -- reaching the requester ----------------------------------------------------------


def test_unreachable_nats() -> None:
    line = one_line_error(hivectl("nats://127.0.0.1:1", "node", "list"))
    assert line.startswith("Error: cannot reach NATS at nats://127.0.0.1:1")


def test_no_requester_answering(nats_server: EmbeddedNats) -> None:
    line = one_line_error(hivectl(nats_server.url, "node", "approve", "node-a"))
    assert "no requester is answering" in line


def test_requester_too_slow(nats_server: EmbeddedNats) -> None:
    with CannedRequester(nats_server.url, handler=lambda request: None) as canned:
        result = CliRunner().invoke(
            app, ["--nats-url", canned.url, "--timeout", "200ms", "node", "list"]
        )
    assert "no answer on hive.api.node.list within 0.2s" in one_line_error(result)


def test_nats_url_from_the_environment(
    requester: CannedRequester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIVE_NATS__URL", requester.url)
    result = CliRunner().invoke(app, ["node", "approve", "node-a"])
    assert (result.exit_code, result.stdout) == (0, "Ok\n"), result.stderr


def test_config_file_gives_url_and_default_output(
    requester: CannedRequester, tmp_path: Path
) -> None:
    conf = tmp_path / "mine.toml"
    conf.write_text(f'output = "json"\n[nats]\nurl = "{requester.url}"\n')
    result = CliRunner().invoke(app, ["--config", str(conf), "node", "list"])
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)) == 3


def test_installed_hivectl_as_a_process(requester: CannedRequester) -> None:
    exe = Path(sys.executable).parent / "hivectl"
    listed = subprocess.run(
        [str(exe), "--nats-url", requester.url, "node", "list", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert [n["node_id"] for n in json.loads(listed.stdout)] == ["zz-requester", "node-a", "node-b"]
    refused = subprocess.run(
        [str(exe), "--nats-url", "nats://127.0.0.1:1", "node", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith("Error: cannot reach NATS at nats://127.0.0.1:1")
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("url_of", [lambda canned: canned.url, lambda _: "nats://127.0.0.1:1"])
def test_list_and_its_errors_in_a_pipe_do_without_rich(
    requester: CannedRequester, url_of: Callable[[CannedRequester], str]
) -> None:
    """rich is for terminals: a table or an error read by a script never imports it."""
    code = (
        "import sys; from hivectl.cli import main;"
        f"sys.argv = ['hivectl', '--nats-url', {url_of(requester)!r}, 'node', 'list'];"
        "import atexit; atexit.register(lambda: print('rich' in sys.modules, file=sys.stderr));"
        "main.run()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stderr.splitlines()[-1] == "False", done.stderr
    assert done.stdout.startswith("ID ") or done.stderr.startswith("Error: cannot reach NATS")
