"""The embedded nats-server: JetStream on, a taken port reported as such, clean stops."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client

from hivectl.core.embedded import EmbeddedNats, EmbeddedNatsError, nats_server_binary


def processes_using(store_dir: Path) -> list[psutil.Process]:
    """Live nats-server processes whose command line names a file under `store_dir`."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            status = proc.info["status"]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        named = "nats-server" in cmdline and str(store_dir) in cmdline
        if named and status != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def gone(pid: int) -> bool:
    """True when `pid` no longer exists: stopped and reaped (a zombie still exists)."""
    return not psutil.pid_exists(pid)


def test_the_binary_is_found() -> None:
    binary = nats_server_binary()
    assert binary.is_file()


async def test_starts_on_a_free_port_with_jetstream(nats_server: EmbeddedNats) -> None:
    assert nats_server.port != 0
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.pid is not None and psutil.pid_exists(nats_server.pid)

    nc = Client()
    await nc.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="hive_test")
        revision = await kv.put("node-1", b"approved")
        entry = await kv.get("node-1")
        assert entry.value == b"approved"
        assert entry.revision == revision
        assert nc.max_payload == 1024 * 1024
    finally:
        await nc.close()
    assert (nats_server.store_dir / "jetstream").is_dir()


def test_a_second_server_on_the_same_port_says_the_port_is_in_use(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    second_dir = tmp_path / "second"
    second = EmbeddedNats(second_dir, port=nats_server.port)
    with pytest.raises(EmbeddedNatsError) as info:
        second.start()
    message = str(info.value)
    assert "already in use" in message
    assert str(nats_server.port) in message
    assert second.pid is None
    assert processes_using(second_dir) == []
    second.stop()  # after a failed start: still safe
    # The first server is unharmed.
    assert nats_server.pid is not None and psutil.pid_exists(nats_server.pid)


def test_other_start_failures_are_not_reported_as_a_taken_port(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "bad", extra_config="this is { not a valid config")
    with pytest.raises(EmbeddedNatsError) as info:
        server.start()
    assert "already in use" not in str(info.value)
    assert "exited during start" in str(info.value)
    assert processes_using(tmp_path / "bad") == []


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    server = EmbeddedNats(store).start()
    pid = server.pid
    assert pid is not None
    assert [p.pid for p in processes_using(store)] == [pid]

    server.stop()
    assert server.pid is None
    assert gone(pid), f"nats-server {pid} still exists after stop()"
    assert processes_using(store) == []

    server.stop()  # twice is safe
    assert server.pid is None


def test_start_twice_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    try:
        server.start()
        pid, port = server.pid, server.port
        assert server.start() is server
        assert (server.pid, server.port) == (pid, port)
        assert len(processes_using(tmp_path / "nats")) == 1
    finally:
        server.stop()


def test_can_start_again_after_stop(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    try:
        server.start()
        first_pid, port = server.pid, server.port
        server.stop()
        # The port is pinned now (read back from the first start): same URL again.
        server.start()
        assert server.pid != first_pid
        assert server.port == port
    finally:
        server.stop()
    assert processes_using(tmp_path / "nats") == []


def test_context_manager_stops_the_server(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "nats") as server:
        pid = server.pid
        assert pid is not None
    assert gone(pid)
