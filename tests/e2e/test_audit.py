"""The audit trail end to end: every operator action is an event naming who did it and
why, read back with `hivectl events` (filters, --since, --follow) and `node describe`;
`node prune` removes only what has been UNKNOWN past its threshold, and asks first."""

from __future__ import annotations

import getpass
import json
import os
import pty
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, poll
from tests.support.terminal import Terminal

pytestmark = pytest.mark.e2e


def events(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(cluster.hivectl("events", "-o", "json", *args).stdout))


def found(listed: list[dict[str, Any]], **want: object) -> dict[str, Any]:
    """The one event with these fields."""
    matches = [e for e in listed if all(e.get(k) == v for k, v in want.items())]
    assert len(matches) == 1, (want, listed)
    return matches[0]


def test_every_operator_action_is_an_event_with_its_actor_and_reason(cluster: Cluster) -> None:
    cluster.start_requester()
    for name in ("node-1", "node-2", "node-3"):
        cluster.start_agent(name)
    poll(lambda: len(cluster.states()) == 4, what="three agents")
    cluster.hivectl("node", "approve", "node-1", "-m", "fingerprint checked", actor="alice")
    cluster.hivectl("node", "reject", "node-2", "-m", "not ours", actor="alice")
    cluster.hivectl("node", "label", "node-1", "pool=gpu", "-m", "gpu pool", actor="dave")
    cluster.hivectl("node", "cordon", "node-1", "-m", "disk errors", actor="dave")
    cluster.hivectl("node", "drain", "node-1", "--force", "-m", "kernel update", actor="dave")
    cluster.hivectl("node", "uncordon", "node-1", "-m", "disk replaced", actor="erin")
    cluster.hivectl("node", "delete", "node-3", "-m", "retired", actor="alice")
    token_id = cluster.hivectl("node", "token", "create", "-m", "rack 7", actor="alice").stdout[:14]
    cluster.hivectl("node", "token", "revoke", token_id, "-m", "leaked", actor="alice")
    cluster.signal("node-2", signal.SIGTERM)  # UNKNOWN at once
    pruned = cluster.hivectl("node", "prune", "--unknown-for", "0s", "--yes", "-m", "gone for good",
                             actor="bob")  # fmt: skip
    assert pruned.stdout.split("\n")[1].split()[0] == "node-2"
    job_id = cluster.submit("--engine", "process", "--", "sleep", "30")  # as nobody in particular
    cluster.hivectl("job", "stop", job_id, "-m", "wrong input", actor="carol")

    listed = events(cluster)
    found(listed, node_id="node-1", event="approval", old="PENDING", new="APPROVED",
          actor="alice", reason="fingerprint checked")  # fmt: skip
    found(listed, node_id="node-2", event="approval", new="REJECTED", actor="alice",
          reason="not ours")  # fmt: skip
    found(listed, node_id="node-3", event="deleted", actor="alice", reason="retired")
    found(listed, node_id="node-1", event="labels", actor="dave", reason="gpu pool")
    found(listed, node_id="node-1", event="cordon", actor="dave", reason="disk errors")
    found(listed, node_id="node-1", event="drain", new="draining", actor="dave",
          reason="kernel update")  # fmt: skip
    found(listed, node_id="node-1", event="uncordon", actor="erin", reason="disk replaced")
    created = found(listed, token_id=token_id, event="created", actor="alice")
    assert created["reason"].endswith(": rack 7")
    found(listed, token_id=token_id, event="revoked", actor="alice", reason="leaked")
    prune = found(listed, node_id="node-2", event="deleted", actor="bob")
    assert prune["reason"].startswith("pruned: UNKNOWN for ")
    assert prune["reason"].endswith("over --unknown-for 0s: gone for good")
    whoami = f"{getpass.getuser()}@{socket.gethostname()}"  # hivectl's default
    found(listed, job_id=job_id, new="PENDING", actor=whoami, reason="submitted")
    found(listed, job_id=job_id, new="STOPPED", actor="carol")
    health = [e for e in listed if e.get("event") == "health"]
    assert health and {e["actor"] for e in health} == {"requester:requester"}

    # --node: that node's events only, the table naming who and why.
    mine = events(cluster, "--node", "node-1")
    assert mine and {e.get("node_id") for e in mine} == {"node-1"}
    table = cluster.hivectl("events", "--node", "node-1").stdout.splitlines()
    assert table[0].split() == ["TIME", "OBJECT", "EVENT", "CHANGE", "ACTOR", "REASON"]
    assert any("PENDING -> APPROVED" in line and "alice" in line for line in table)
    assert {e["job_id"] for e in events(cluster, "--job", job_id[:6])} == {job_id}
    # node describe ends with them.
    described = cluster.hivectl("node", "describe", "node-1").stdout.splitlines()
    tail = described[described.index("Events:") :]
    assert any("approval" in line and "alice" in line and "fingerprint checked" in line
               for line in tail)  # fmt: skip


def test_events_since_and_follow(cluster: Cluster) -> None:
    cluster.start_requester()
    first = cluster.hivectl("node", "token", "create", actor="alice").stdout[:14]
    assert [e["token_id"] for e in events(cluster, "--since", "1h")] == [first]
    poll(lambda: not events(cluster, "--since", "2s"), what="the first event to be 2s old")
    assert "No events found." in cluster.hivectl("events", "--since", "2s").stderr

    env = cluster.env | {"HIVE_NATS__CREDENTIALS_FILE": str(cluster.operator)}
    command = [sys.executable, "-m", "hivectl.cli.main", "--nats-url", cluster.url,
               "events", "--follow", "-o", "json"]  # fmt: skip
    follow = Terminal(command, cluster.base, env)
    try:
        follow.wait_for(first, timeout=15)  # what was there already
        second = cluster.hivectl("node", "token", "create", actor="bob").stdout[:14]
        follow.wait_for(second, timeout=15)  # and what comes after
        lines = [json.loads(line) for line in follow.lines]
        assert [(e["token_id"], e["actor"]) for e in lines] == [(first, "alice"), (second, "bob")]
        follow.ctrl_c()
        assert follow.proc.wait(15) == 130
    finally:
        follow.kill()
    assert [e["token_id"] for e in events(cluster, "--since", "2s")] == [second]


def test_node_prune_removes_only_nodes_unknown_past_the_threshold_and_asks_first(
    cluster: Cluster,
) -> None:
    cluster.start_requester(auto_approve=True)
    for name in ("a", "b", "c"):
        cluster.start_agent(name)
    poll(lambda: len(cluster.states()) == 4, what="three agents")
    cluster.signal("a", signal.SIGTERM)

    def refused() -> list[str]:
        """`node prune` in a script without --yes: the nodes it lists before refusing."""
        result = cluster.hivectl("node", "prune", "--unknown-for", "5s", check=False)
        if result.returncode != 1:
            return []
        assert result.stderr.splitlines()[-1].endswith("add --yes (no terminal)")
        return [line.split()[0] for line in result.stderr.splitlines()[2:-1]]

    assert poll(refused, timeout=20, what="a UNKNOWN for 5s") == ["a"]
    assert len(cluster.states()) == 4  # nothing removed
    cluster.signal("b", signal.SIGTERM)  # UNKNOWN, but not for 5s yet
    pruned = cluster.hivectl("node", "prune", "--unknown-for", "5s", "--yes")
    assert [line.split()[0] for line in pruned.stdout.splitlines()] == ["ID", "a"]
    assert cluster.states() == {"requester": ("APPROVED", "HEALTHY"), "b": ("APPROVED", "UNKNOWN"),
                                "c": ("APPROVED", "HEALTHY")}  # fmt: skip
    # At a terminal it asks; 'y' prunes.
    answer = at_terminal(cluster, ["node", "prune", "--unknown-for", "0s"], "y\n")
    assert "Prune 1 node? [y/N]" in answer and "Pruned 1 node." in answer
    assert set(cluster.states()) == {"requester", "c"}


def at_terminal(cluster: Cluster, args: list[str], typed: str) -> str:
    """hivectl run with a pseudo-terminal for its stdin and stderr; what it wrote there."""
    main, side = pty.openpty()
    env = cluster.env | {"HIVE_NATS__CREDENTIALS_FILE": str(cluster.operator)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hivectl.cli.main", "--nats-url", cluster.url, *args],
        stdin=side, stdout=side, stderr=side, env=env, close_fds=True,
    )  # fmt: skip
    os.close(side)
    os.write(main, typed.encode())
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the other side closed: hivectl is done
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(30) == 0, out
    return out.decode(errors="replace").replace("\r", "")
