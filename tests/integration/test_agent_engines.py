"""A node advertises the executors that can run jobs now, against the real Docker engine.

A node whose Docker engine does not answer leaves `docker` out of its executors (so the
requester places no Docker job there) and says why, which `hivectl node describe`
shows; once the engine answers again, the next info update brings `docker` back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hivectl.core.config import NatsSettings, NodeAgentConfig
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import NodeRecord
from nodeagent.service import NodeAgent
from requester.service import Requester
from tests.support.cluster import RunningRequester, requester_config, wait_for
from tests.support.docker_fixtures import docker_unavailable
from tests.support.dockerd import DockerUnavailable, PrivateDockerd

NODE = "node-d"


@pytest.fixture
def own_engine() -> Iterator[PrivateDockerd]:
    """An engine of this test's own: it is stopped and started, which others must not see."""
    engine = PrivateDockerd()
    try:
        engine.start()
    except DockerUnavailable as exc:
        docker_unavailable(exc.reason)
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture
async def requester(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Requester]:
    config = requester_config(nats_server.url, tmp_path / "req", auto_approve=True)
    async with RunningRequester(config) as req:
        yield req


async def run_agent(nats_server: EmbeddedNats, tmp_path: Path, docker_host: str) -> NodeAgent:
    cfg = NodeAgentConfig(
        name=NODE,
        state_dir=tmp_path / "agent",
        nats=NatsSettings(url=nats_server.url),
        heartbeat_interval=0.1,
        resource_update_interval=0.2,
        info_update_interval=0.2,
        executors={"docker": {"host": docker_host}, "process": {"enabled": True}},
    )
    return NodeAgent(cfg, request_timeout=2.0)


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    running: list[tuple[NodeAgent, asyncio.Task[None]]] = []

    def start(agent: NodeAgent) -> None:
        running.append((agent, asyncio.create_task(agent.serve())))

    yield start
    for agent, task in running:
        agent.stop()
        await asyncio.wait_for(task, 15)


async def record_where(requester: Requester, check: Any, what: str) -> NodeRecord:
    """The node's record once `check(record)` holds (as the requester stored it)."""
    assert requester.registry is not None
    registry = requester.registry

    def found() -> NodeRecord | None:
        record = registry.get(NODE)
        return record if record is not None and check(record) else None

    return await wait_for(found, timeout=15, what=what)


def describe(nats_server: EmbeddedNats, home: Path, node: str = NODE) -> list[str]:
    """`hivectl node describe` as an operator runs it: its lines."""
    done = subprocess.run(
        [sys.executable, "-m", "hivectl.cli.main", "--nats-url", nats_server.url,
         "node", "describe", node],
        capture_output=True, text=True, timeout=30, env={"HOME": str(home)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


async def test_no_engine_at_the_socket_means_no_docker_and_describe_says_why(
    nats_server: EmbeddedNats, tmp_path: Path, requester: Requester, serve: Any
) -> None:
    socket = f"unix://{tmp_path}/no-docker.sock"
    serve(await run_agent(nats_server, tmp_path, socket))
    record = await record_where(requester, lambda r: True, "the node to register")
    assert record.info.executors == ["process"]
    reason = f"cannot reach {socket}: No such file or directory"
    assert record.info.unavailable == {"docker": reason}
    lines = await asyncio.to_thread(describe, nats_server, tmp_path)
    at = lines.index("Executors:       process")
    assert lines[at + 1] == f"                 docker: unavailable ({reason})"


async def test_docker_follows_its_engine_going_and_coming_back(
    nats_server: EmbeddedNats,
    tmp_path: Path,
    requester: Requester,
    serve: Any,
    own_engine: PrivateDockerd,
) -> None:
    serve(await run_agent(nats_server, tmp_path, own_engine.base_url))
    record = await record_where(requester, lambda r: True, "the node to register")
    assert record.info.executors == ["docker", "process"] and record.info.unavailable == {}
    assert "Executors:       docker, process" in await asyncio.to_thread(
        describe, nats_server, tmp_path
    )

    await asyncio.to_thread(own_engine.halt)
    record = await record_where(
        requester, lambda r: "docker" not in r.info.executors, "docker to be withdrawn"
    )
    assert record.info.executors == ["process"]
    assert record.info.unavailable["docker"].startswith(f"cannot reach {own_engine.base_url}: ")

    await asyncio.to_thread(own_engine.resume)
    record = await record_where(
        requester, lambda r: "docker" in r.info.executors, "docker to be offered again"
    )
    assert record.info.executors == ["docker", "process"] and record.info.unavailable == {}
