"""Operator labels and selector targeting against a real requester on a real nats-server.

Nodes are simulated (real signed registrations and sealed info updates, as
tests/support/simnode.py sends them); `hivectl` runs as a process, as an operator
runs it, so its confirmation sees what a terminal or a script would give it.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from hivectl.core import auth, codec
from hivectl.core.api import NodeLabelReply, NodeLabelRequest
from hivectl.core.bus import RemoteError, request
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import Approval, InfoReply, InfoUpdate, NodeEvent, RegisterReply
from hivectl.core.subjects import Subjects
from requester.service import Requester
from tests.support.cluster import RunningRequester, requester_config
from tests.support.simnode import SimNode, sample_info

S = Subjects()
AUTO = {"hive.io/os": "linux", "hive.io/arch": "x86_64", "hive.io/hostname": "sim"}


@pytest.fixture
async def requester(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Requester]:
    async with RunningRequester(requester_config(nats_server.url, tmp_path / "req")) as req:
        yield req


async def joined(nc: Client, node_id: str, labels: dict[str, str]) -> SimNode:
    node = SimNode(nc, node_id)
    node.info = sample_info(labels)
    assert isinstance(await node.register(), RegisterReply)
    return node


async def label(nc: Client, **fields: object) -> NodeLabelReply:
    message = NodeLabelRequest.model_validate(fields)
    reply = await request(nc, S.api("node", "label"), message, NodeLabelReply, timeout=5)
    assert isinstance(reply, NodeLabelReply)
    return reply


def record_of(req: Requester, node_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """(the node's own labels as stored, the operator's)."""
    assert req.registry is not None
    record = req.registry.get(node_id)
    assert record is not None
    return record.info.labels, record.operator_labels


def merged(req: Requester, node_id: str) -> dict[str, str]:
    assert req.registry is not None
    record = req.registry.get(node_id)
    assert record is not None
    return dict(req.registry.labels(record))


# -- operator labels and what a node cannot do ---------------------------------------------


async def test_a_node_cannot_set_remove_or_shadow_operator_and_reserved_labels(
    requester: Requester, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    node = await joined(nc, "node-1", {"pool": "silver", "zone": "a"})
    await label(nc, id="node-1", labels={"pool": "gold", "rack": "r1"})
    assert merged(requester, "node-1") == {**AUTO, "zone": "a", "pool": "gold", "rack": "r1"}

    # The node registers again and updates its info, claiming other labels, Hive's own
    # and (in fields no model has) the operator's.
    node.info = sample_info({"pool": "bronze", "zone": "b", "hive.io/os": "windows"})
    assert isinstance(await node.register(), RegisterReply)
    update = InfoUpdate(node_id="node-1", info=node.info).model_dump(mode="json")
    update |= {"v": 1, "kind": "info", "operator_labels": {"pool": "tin"}}
    update["info"]["operator_labels"] = {"rack": "stolen"}
    assert node.key is not None
    sealed = auth.seal(codec.pack(update), node.key)
    reply = await nc.request(S.node_info("node-1"), sealed, timeout=5)
    assert codec.decode(reply.data, InfoReply).known

    assert record_of(requester, "node-1") == (
        {"pool": "bronze", "zone": "b"},  # hive.io/os dropped
        {"pool": "gold", "rack": "r1"},  # untouched
    )
    assert merged(requester, "node-1") == {**AUTO, "zone": "b", "pool": "gold", "rack": "r1"}
    assert requester.membership is not None
    assert requester.membership.labels_dropped == 2  # register + info
    warned = [r.getMessage() for r in caplog.records if "only Hive sets" in r.getMessage()]
    assert warned == [  # logged once: an agent sends its info again every minute
        "node node-1 reports labels under hive.io/, which only Hive sets: ignored hive.io/os"
    ]


async def test_overwrite_rules_and_the_labels_event(requester: Requester, nc: Client) -> None:
    await joined(nc, "node-1", {"pool": "silver"})
    events = await nc.subscribe(S.node_events("node-1"))
    # Overriding the node's own label needs no --overwrite: that is what they are for.
    first = await label(nc, id="node", labels={"pool": "gold"}, reason="gpu pool")
    assert (first.id, first.operator_labels, first.labels["pool"]) == (
        "node-1",
        {"pool": "gold"},
        "gold",
    )
    with pytest.raises(RemoteError) as refused:
        await label(nc, id="node-1", labels={"pool": "tin", "tier": "x"})
    assert refused.value.code == "exists"
    assert refused.value.reason == (
        "node node-1 already has operator label pool=gold: use --overwrite to set it to 'tin'"
    )
    assert record_of(requester, "node-1")[1] == {"pool": "gold"}  # nothing changed
    again = await label(nc, id="node-1", labels={"pool": "gold"})  # the same value: fine
    assert again.operator_labels == {"pool": "gold"}
    done = await label(nc, id="node-1", labels={"pool": "tin"}, remove=["zone"], overwrite=True)
    assert (done.operator_labels, done.not_set) == ({"pool": "tin"}, ["zone"])
    gone = await label(nc, id="node-1", remove=["pool"])
    assert (gone.operator_labels, gone.labels["pool"]) == ({}, "silver")  # the node's again

    seen = [codec.decode((await events.next_msg(timeout=5)).data, NodeEvent) for _ in range(3)]
    assert [(e.event, e.old, e.new, e.reason) for e in seen] == [
        ("labels", "", "pool=gold", "gpu pool"),
        ("labels", "pool=gold", "pool=tin", ""),
        ("labels", "pool=tin", "", ""),
    ]
    with pytest.raises(RemoteError, match="the requester itself cannot be changed"):
        await label(nc, id="requester", labels={"a": "b"})


# -- hivectl, by selector, on 20 nodes ---------------------------------------------------------


def hivectl_env(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "hivectl.toml"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    return env | {"HIVE_CONFIG": str(empty), "NO_COLOR": "1"}


async def hivectl(url: str, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """hivectl as a script runs it: no terminal; (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hivectl.cli.main", "--nats-url", url, *args,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def fleet_labels(index: int) -> dict[str, str]:
    """Mixed labels: three zones, a GPU on every fourth node, a few odd ones out."""
    labels = {"zone": f"z{index % 3}"}
    if index % 4 == 0:
        labels["gpu"] = "true"
    if index % 5 == 0:
        labels["tier"] = "edge"
    return labels


@pytest.fixture
async def fleet(requester: Requester, nc: Client) -> dict[str, dict[str, str]]:
    """20 PENDING nodes, node-00 .. node-19, with `fleet_labels`."""
    nodes = {f"node-{i:02d}": fleet_labels(i) for i in range(20)}
    await asyncio.gather(*(joined(nc, node_id, labels) for node_id, labels in nodes.items()))
    return nodes


def approvals(req: Requester) -> dict[str, Approval]:
    assert req.registry is not None
    return {r.node_id: r.approval for r in req.registry.records()}


def ok_lines(ids: list[str]) -> str:
    return "".join(f"{node_id}: Ok\n" for node_id in sorted(ids))


async def test_selector_operations_touch_exactly_the_nodes_that_match(
    requester: Requester,
    fleet: dict[str, dict[str, str]],
    nats_server: EmbeddedNats,
    tmp_path: Path,
) -> None:
    url, env = nats_server.url, hivectl_env(tmp_path)
    # zone z0 or z1, no GPU
    batch = [n for n, own in fleet.items() if own["zone"] in ("z0", "z1") and "gpu" not in own]
    code, out, err = await hivectl(
        url, env, "node", "label", "-l", "zone in (z0,z1),!gpu", "pool=batch", "--yes"
    )
    assert (code, out) == (0, ok_lines(batch)), err
    for node_id in fleet:
        assert record_of(requester, node_id)[1] == ({"pool": "batch"} if node_id in batch else {})

    # The operator's label is matched like any other: approve by it.
    code, out, err = await hivectl(url, env, "node", "approve", "-l", "pool=batch", "-y")
    assert (code, out) == (0, ok_lines(batch)), err
    # Ids and a selector together: their union. Hive's own labels match too.
    edge = [n for n, labels in fleet.items() if labels.get("tier") == "edge"]
    named = ["node-01", "node-02"]
    code, out, err = await hivectl(
        url, env, "node", "reject", *named, "-l", "tier=edge,hive.io/os=linux", "-m", "edge", "-y"
    )
    assert (code, out) == (0, ok_lines(edge + named)), err
    expected = {n: Approval.PENDING for n in fleet}
    expected |= {n: Approval.APPROVED for n in batch}
    expected |= {n: Approval.REJECTED for n in edge + named}
    assert approvals(requester) == expected
    assert requester.registry is not None
    assert {r.reason for r in requester.registry.records() if r.node_id in edge} == {"edge"}

    code, out, err = await hivectl(url, env, "node", "approve", "-l", "zone=z9", "--yes")
    assert (code, out) == (1, "")
    assert err == "Error: no node to approve: no compute node matches -l 'zone=z9'\n"
    assert approvals(requester) == expected


async def test_cordon_uncordon_and_drain_by_selector_touch_exactly_the_nodes_that_match(
    requester: Requester,
    fleet: dict[str, dict[str, str]],
    nats_server: EmbeddedNats,
    tmp_path: Path,
) -> None:
    url, env = nats_server.url, hivectl_env(tmp_path)
    z2 = {n for n, own in fleet.items() if own["zone"] == "z2"}
    gpus = {n for n, own in fleet.items() if "gpu" in own}
    code, _, err = await hivectl(url, env, "node", "cordon", "-l", "zone=z2", "-m", "power", "-y")
    assert code == 0, err
    code, _, err = await hivectl(url, env, "node", "drain", "-l", "gpu", "--force", "-y")
    assert code == 0, err
    assert requester.registry is not None

    def cordoned() -> set[str]:
        assert requester.registry is not None
        return {r.node_id for r in requester.registry.records() if r.cordoned}

    assert cordoned() == z2 | gpus
    drains = {r.node_id for r in requester.registry.records() if r.drain is not None}
    assert drains == gpus
    # Uncordon z2: exactly its nodes are back in service, drained GPU nodes of z2 included.
    code, _, err = await hivectl(url, env, "node", "uncordon", "-l", "zone=z2", "-y")
    assert code == 0, err
    assert cordoned() == gpus - z2
    # Several nodes, no terminal, no --yes: listed, refused, nothing changed.
    code, _, err = await hivectl(url, env, "node", "cordon", "-l", "zone=z0")
    assert code == 1 and "add --yes" in err, err
    assert cordoned() == gpus - z2


async def test_several_nodes_are_listed_and_not_changed_without_yes_off_a_terminal(
    requester: Requester,
    fleet: dict[str, dict[str, str]],
    nats_server: EmbeddedNats,
    tmp_path: Path,
) -> None:
    url, env = nats_server.url, hivectl_env(tmp_path)
    gpus = sorted(n for n, labels in fleet.items() if "gpu" in labels)
    code, out, err = await hivectl(url, env, "node", "approve", "-l", "gpu")
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[0] == f"This will approve {len(gpus)} nodes:"
    assert lines[1].split() == ["ID", "APPROVAL", "STATUS", "LABELS"]
    assert [line.split()[0] for line in lines[2:-1]] == gpus
    assert lines[2].split() == [gpus[0], "PENDING", "UNKNOWN", "gpu=true,tier=edge,zone=z0"]
    assert lines[-1] == (
        f"Error: not going to approve {len(gpus)} nodes without confirmation, and there "
        "is no terminal to ask on: add --yes (-y) to go ahead"
    )
    # Several ids, the same; one of them unknown: refused before anything is listed.
    code, out, err = await hivectl(url, env, "node", "label", "node-01", "node-02", "a=b")
    assert code == 1 and "This will label 2 nodes:" in err
    code, out, err = await hivectl(url, env, "node", "approve", "node-01", "nope", "--yes")
    assert (code, err) == (1, "Error: node 'nope' not found\n")
    code, out, err = await hivectl(url, env, "node", "label", "requester", "node-01", "a=b")
    assert (code, err) == (
        1, "Error: cannot label requester: it is the requester, not a compute node\n"
    )  # fmt: skip
    assert set(approvals(requester).values()) == {Approval.PENDING}
    assert all(record_of(requester, n)[1] == {} for n in fleet)


def answered(argv: list[str], env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run `argv` on a pseudo-terminal, type `answer` at its prompt; (status, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    output, deadline = b"", time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], deadline - time.monotonic())
            try:
                chunk = os.read(leader, 4096) if ready else b""
            except OSError:  # the terminal closed: the program ended
                break
            if not chunk:
                break
            output += chunk
            if answer and b"[y/N]" in output:
                os.write(leader, answer.encode() + b"\n")
                answer = ""
        text = output.decode(errors="replace").replace("\r\n", "\n")
        return proc.wait(10), re.sub(r"\x1b\[[0-9;]*m", "", text)  # rich's styles
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_terminal_is_asked_and_its_answer_kept(
    requester: Requester,
    fleet: dict[str, dict[str, str]],
    nats_server: EmbeddedNats,
    tmp_path: Path,
) -> None:
    env = hivectl_env(tmp_path)
    argv = [sys.executable, "-m", "hivectl.cli.main", "--nats-url", nats_server.url]
    argv += ["node", "label", "-l", "zone=z2", "pool=lab"]
    z2 = sorted(n for n, labels in fleet.items() if labels["zone"] == "z2")
    code, output = await asyncio.to_thread(answered, argv, env, "n")
    assert code == 1, output
    assert f"This will label {len(z2)} nodes:" in output
    assert f"Label these {len(z2)} nodes? [y/N]:" in output
    assert "Error: cancelled: no node was changed" in output
    assert all(record_of(requester, n)[1] == {} for n in fleet)

    code, output = await asyncio.to_thread(answered, argv, env, "y")
    assert code == 0, output
    assert output.endswith(ok_lines(z2))
    assert [n for n in fleet if record_of(requester, n)[1]] == z2
