"""Shared fixtures: a real nats-server with JetStream per test, and a client for it; a
real three-server NATS cluster for the tests that need one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from hivectl.core.bus import connect_daemon
from hivectl.core.config import NatsSettings
from hivectl.core.embedded import EmbeddedNats
from tests.support.natscluster import NatsCluster

pytest_plugins = ["tests.support.docker_fixtures"]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A real nats-server on a free port, JetStream stored under the test's temp dir."""
    with EmbeddedNats(tmp_path / "nats", port=0) as server:
        yield server


@pytest.fixture
def nats_settings(nats_server: EmbeddedNats) -> NatsSettings:
    return NatsSettings(url=nats_server.url)


@pytest.fixture
async def nc(nats_settings: NatsSettings) -> AsyncIterator[Client]:
    client = await connect_daemon(nats_settings, "test-client")
    yield client
    await client.close()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three clustered nats-servers with JetStream and Hive's role users (credentials in
    `nats_cluster.credentials`), ready: JetStream has a meta leader and every peer."""
    with NatsCluster(tmp_path / "nats-cluster") as cluster:
        yield cluster
