"""`hivectl node cordon|uncordon|drain`, and what list and describe show of them, against
a real nats-server and the canned requester of test_cli_nodes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from hivectl.core.api import (
    NodeCordonRequest,
    NodeDrainRequest,
    NodeGetRequest,
    NodeListRequest,
    NodeUncordonRequest,
)
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import Drain, Message, OkReply
from tests.unit.test_cli_nodes import (
    NOW,
    CannedRequester,
    compute_node,
    hivectl,
    isolated_config,  # noqa: F401 (an autouse fixture, used by being imported)
    one_line_error,
    table,
)


@pytest.fixture
def canned(nats_server: EmbeddedNats) -> Iterator[CannedRequester]:
    with CannedRequester(nats_server.url) as requester:
        yield requester


OPS = (NodeCordonRequest, NodeUncordonRequest, NodeDrainRequest)


def accepting(canned: CannedRequester) -> CannedRequester:
    """The canned requester, also answering Ok to cordon, uncordon and drain."""

    def answer(request: Message) -> Message:
        if isinstance(request, OPS):
            return OkReply(id=request.id)
        return canned.answer(request)

    canned.handler = answer
    return canned


def test_list_shows_cordoned_and_draining_nodes_in_status(nats_server: EmbeddedNats) -> None:
    drain = Drain(started_at=NOW, deadline=NOW + timedelta(minutes=10))
    nodes = [
        compute_node("node-a"),
        compute_node("node-b", cordoned=True),
        compute_node("node-c", cordoned=True, drain=drain),
        compute_node("node-d", cordoned=True, drain=drain.model_copy(update={"ended_at": NOW})),
    ]
    with CannedRequester(nats_server.url, pages=[nodes]) as fake:
        result = hivectl(fake.url, "node", "list", "--no-headers")
    assert result.exit_code == 0, result.stderr
    assert [row[2] for row in table(result.stdout)] == [
        "HEALTHY",
        "HEALTHY,cordoned",
        "HEALTHY,draining",
        "HEALTHY,cordoned",
    ]


def test_filter_status_takes_health_and_scheduling_words(canned: CannedRequester) -> None:
    for words, fields in [
        ("cordoned", (None, True, None)),
        ("Healthy,schedulable", ("HEALTHY", False, None)),
        ("draining", (None, None, True)),
        ("unknown", ("UNKNOWN", None, None)),
    ]:
        result = hivectl(canned.url, "node", "list", "--filter-status", words)
        assert result.exit_code == 0, result.stderr
        sent = canned.sent(NodeListRequest)[-1]
        assert isinstance(sent, NodeListRequest)
        assert (sent.health, sent.cordoned, sent.draining) == fields
    count = len(canned.requests)
    line = one_line_error(hivectl(canned.url, "node", "list", "--filter-status", "tired"), 2)
    assert "invalid --filter-status 'tired'" in line
    assert len(canned.requests) == count


def test_describe_shows_the_cordon_and_the_drain(nats_server: EmbeddedNats) -> None:
    now = datetime.now(UTC)
    drain = Drain(
        started_at=now - timedelta(seconds=30),
        deadline=now + timedelta(minutes=10),
        reason="kernel update",
        remaining=2,
        moved=1,
    )
    node = compute_node("node-a", cordoned=True, cordon_reason="kernel update", drain=drain)
    with CannedRequester(nats_server.url, pages=[[node]]) as fake:
        result = hivectl(fake.url, "node", "describe", "node-a")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index("Scheduling:      cordoned: no new executions (kernel update)")
    assert re.fullmatch(
        r" {17}draining since .* UTC \(30s ago\): "
        r"2 batch executions left, 1 moved; deadline in (600|59\d)s",
        lines[at + 1],
    )
    assert lines[at + 2] == "                   reason: kernel update"


def test_cordon_resolves_every_node_before_changing_any(canned: CannedRequester) -> None:
    accepting(canned)
    result = hivectl(canned.url, "node", "cordon", "node-a", "node-b", "-m", "rack move", "-y")
    assert (result.exit_code, result.stdout) == (0, "node-a: Ok\nnode-b: Ok\n")
    sent = [r for r in canned.requests if not isinstance(r, NodeGetRequest)]
    assert sent == [
        NodeCordonRequest(id="node-a", reason="rack move"),
        NodeCordonRequest(id="node-b", reason="rack move"),
    ]
    canned.requests.clear()
    line = one_line_error(hivectl(canned.url, "node", "uncordon", "node-a", "node-x", "-y"))
    assert line == "Error: no node matches 'node-x'"
    assert not [r for r in canned.requests if isinstance(r, OPS)]


def test_drain_sends_its_deadline_in_seconds(canned: CannedRequester) -> None:
    accepting(canned)
    for args, fields in [
        ([], (3600.0, False, False)),
        (["--deadline", "10m"], (600.0, False, False)),
        (["--no-deadline"], (None, False, False)),
        (["--force"], (3600.0, True, False)),
        (["--cancel"], (3600.0, False, True)),
    ]:
        result = hivectl(canned.url, "node", "drain", "node-a", *args, "-m", "patch")
        assert (result.exit_code, result.stdout) == (0, "Ok\n"), result.stderr
        sent = canned.sent(NodeDrainRequest)[-1]
        assert isinstance(sent, NodeDrainRequest) and sent.reason == "patch"
        assert (sent.deadline, sent.force, sent.cancel) == fields
    count = len(canned.requests)
    line = one_line_error(hivectl(canned.url, "node", "drain", "node-a", "--deadline", "x"), 2)
    assert line.startswith("Error: invalid --deadline: 'x' is not a duration")
    assert len(canned.requests) == count


def test_monitor_follows_a_drain_until_it_ends(nats_server: EmbeddedNats) -> None:
    now = datetime.now(UTC)
    drain = Drain(started_at=now, deadline=now + timedelta(minutes=5), remaining=1)
    states = [
        compute_node("node-a", cordoned=True, drain=drain),
        compute_node("node-a", cordoned=True, drain=drain.model_copy(update={"moved": 1})),
        compute_node("node-a", cordoned=True, drain=drain.model_copy(
            update={"moved": 1, "remaining": 0, "ended_at": now, "outcome": "drained"})),
    ]  # fmt: skip
    with CannedRequester(nats_server.url, pages=[[states[0]]]) as fake:

        def answer(request: Message) -> Message:
            if isinstance(request, NodeGetRequest):
                fake.pages = [[states.pop(0) if len(states) > 1 else states[0]]]
            return fake.answer(request)

        fake.handler = answer
        result = hivectl(fake.url, "node", "drain", "node-a", "--monitor")
    assert (result.exit_code, result.stdout) == (0, ""), result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("node-a: draining: 1 batch execution left; deadline in ")
    assert lines[1].startswith("node-a: draining: 1 batch execution left, 1 moved; deadline ")
    assert lines[2] == "node-a: drained (1 execution moved to other nodes)"
