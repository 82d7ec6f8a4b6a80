"""Node management end to end, as Bacalhau's node-management walkthrough plays it."""

from __future__ import annotations

import asyncio
import signal
import time

import nats
import pytest

from hivectl.core import codec
from hivectl.core.bus import connect_cli
from hivectl.core.config import NatsSettings
from hivectl.core.models import NodeEvent
from hivectl.core.subjects import Subjects
from tests.e2e.conftest import Cluster, poll

pytestmark = pytest.mark.e2e


def three_nodes(cluster: Cluster) -> None:
    cluster.start_requester()
    for name in ("node-1", "node-2", "node-3"):
        cluster.start_agent(name, "zone=eu-1")
    poll(
        lambda: (
            cluster.states()
            == {
                "requester": ("APPROVED", "HEALTHY"),
                "node-1": ("PENDING", "HEALTHY"),
                "node-2": ("PENDING", "HEALTHY"),
                "node-3": ("PENDING", "HEALTHY"),
            }
        ),
        what="three PENDING HEALTHY nodes",
    )


def test_the_bacalhau_walkthrough(cluster: Cluster) -> None:
    three_nodes(cluster)
    table = cluster.hivectl("node", "list").stdout
    header = ["ID", "APPROVAL", "STATUS", "CPU", "MEMORY", "GPU", "LABELS"]
    assert table.splitlines()[0].split() == header
    assert table.splitlines()[1].split()[:3] == ["requester", "APPROVED", "HEALTHY"]

    assert cluster.hivectl("node", "reject", "node-3", "-m", "malicious node?").stdout == "Ok\n"
    assert cluster.hivectl("node", "approve", "node-1").stdout == "Ok\n"
    assert cluster.hivectl("node", "delete", "node-2").stdout == "Ok\n"

    after = {
        "requester": ("APPROVED", "HEALTHY"),
        "node-1": ("APPROVED", "HEALTHY"),
        "node-3": ("REJECTED", "HEALTHY"),
    }
    assert cluster.states() == after
    # node-2's agent runs on; it hears it is unknown and says so, once.
    poll(lambda: "removed by an operator" in cluster.log("node-2"), what="node-2's notice")
    assert cluster.states() == after
    assert cluster.nodes()["node-3"]["reason"] == "malicious node?"

    cluster.signal("node-2", signal.SIGTERM)
    cluster.start_agent("node-2")
    poll(
        lambda: cluster.states().get("node-2") == ("PENDING", "HEALTHY"),
        what="node-2 back as PENDING",
    )
    assert cluster.log("node-2").count("removed by an operator") == 1


def test_unknown_and_ambiguous_ids_are_one_line_errors(cluster: Cluster) -> None:
    three_nodes(cluster)
    for args, message in [
        (("node", "approve", "nope"), "not found"),
        (("node", "describe", "node"), "matches node-1, node-2, node-3"),
    ]:
        result = cluster.hivectl(*args, check=False)
        assert result.returncode == 1
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    described = cluster.hivectl("node", "describe", "node-1").stdout
    assert "Fingerprint:" in described and "zone=eu-1" in described


def test_an_agent_stopped_without_notice_goes_unhealthy_then_unknown(cluster: Cluster) -> None:
    three_nodes(cluster)
    cluster.signal("node-3", signal.SIGKILL)
    killed = time.monotonic()
    poll(lambda: cluster.states()["node-3"][1] == "UNHEALTHY", what="node-3 UNHEALTHY")
    unhealthy = time.monotonic() - killed
    poll(lambda: cluster.states()["node-3"][1] == "UNKNOWN", what="node-3 UNKNOWN")
    unknown = time.monotonic() - killed
    # unhealthy_after=1.5s, disconnected_after=3s; the last beat came up to 0.3s before
    # the kill, and each check costs one hivectl process (about half a second).
    assert 1.1 <= unhealthy < 3.0
    assert 2.6 <= unknown < 4.5
    events = asyncio.run(node_events(cluster, "node-3"))
    health = [(e.old, e.new) for e in events if e.event == "health"]
    assert health[-2:] == [("HEALTHY", "UNHEALTHY"), ("UNHEALTHY", "UNKNOWN")]
    assert cluster.states()["node-1"] == ("PENDING", "HEALTHY")


def test_an_agent_that_stops_cleanly_is_unknown_at_once(cluster: Cluster) -> None:
    three_nodes(cluster)
    cluster.signal("node-1", signal.SIGTERM)
    # Well before unhealthy_after (1.5s): the agent said it was leaving.
    started = time.monotonic()
    poll(lambda: cluster.states()["node-1"][1] == "UNKNOWN", timeout=1.4, what="node-1 UNKNOWN")
    assert time.monotonic() - started < 1.5


def test_requester_kill9_keeps_approvals_and_never_shows_unhealthy(cluster: Cluster) -> None:
    three_nodes(cluster)
    cluster.hivectl("node", "approve", "node-1")
    cluster.hivectl("node", "reject", "node-3", "-m", "no")
    cluster.signal("requester", signal.SIGKILL)  # its embedded NATS goes down with it
    poll(cluster.port_is_free, what="the embedded NATS to exit")
    cluster.start_requester()
    expected = {
        "requester": ("APPROVED", "HEALTHY"),
        "node-1": ("APPROVED", "HEALTHY"),
        "node-2": ("PENDING", "HEALTHY"),
        "node-3": ("REJECTED", "HEALTHY"),
    }
    poll(lambda: cluster.states() == expected, what="every node HEALTHY again")
    for node_id in ("node-1", "node-2", "node-3"):
        events = asyncio.run(node_events(cluster, node_id))
        health = [(e.old, e.new) for e in events if e.event == "health"]
        assert ("UNKNOWN", "HEALTHY") in health
        assert all(new != "UNHEALTHY" for _, new in health), health
        # the restarted requester saw each node UNKNOWN until its first heartbeat
        assert health[-1] == ("UNKNOWN", "HEALTHY")


async def node_events(cluster: Cluster, node_id: str) -> list[NodeEvent]:
    """Every event the HIVE_EVENTS stream holds for one node, oldest first."""
    settings = NatsSettings(url=cluster.url, credentials_file=cluster.operator)
    nc = await connect_cli(settings)
    js = nc.jetstream()
    sub = await js.subscribe(Subjects().node_events(node_id), ordered_consumer=True)
    events: list[NodeEvent] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                return events
            events.append(codec.decode(msg.data, NodeEvent))
    finally:
        await nc.close()
