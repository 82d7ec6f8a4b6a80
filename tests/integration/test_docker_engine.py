"""The private Docker engine really runs containers and applies limits.

These tests pin down the engine behaviour the node agent's Docker executor
relies on: separate stdout/stderr, the exit code, and resource limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # only for annotations: the engine comes from the fixture plugin
    from tests.support.dockerd import PrivateDockerd

pytestmark = pytest.mark.docker

MEMORY_LIMIT = 64 * 1024 * 1024
NANO_CPUS = 500_000_000  # half a CPU


@pytest.fixture
def docker_client(docker_engine: PrivateDockerd) -> Iterator[Any]:
    """A client per test, so one test's open connections never leak into another."""
    client = docker_engine.client()
    try:
        yield client
    finally:
        client.close()


def test_container_output_and_exit_code_are_read_back(
    docker_client: Any, busybox_image: str
) -> None:
    container = docker_client.containers.create(
        busybox_image,
        ["sh", "-c", "echo hello-from-busybox; echo err >&2; exit 3"],
        network_mode="none",
    )
    try:
        container.start()
        result = container.wait(timeout=60)
        assert result["StatusCode"] == 3
        assert container.logs(stdout=True, stderr=False) == b"hello-from-busybox\n"
        assert container.logs(stdout=False, stderr=True) == b"err\n"
    finally:
        container.remove(force=True)


def _cgroup_value(container: Any, v2_file: str, v1_file: str) -> str:
    """Read a limit as the container itself sees it (cgroup v2 or v1 layout)."""
    script = f"cat /sys/fs/cgroup/{v2_file} 2>/dev/null || cat /sys/fs/cgroup/{v1_file}"
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output
    return str(output.decode().strip())


def test_memory_and_cpu_limits_are_applied(docker_client: Any, busybox_image: str) -> None:
    container = docker_client.containers.run(
        busybox_image,
        ["sleep", "300"],
        network_mode="none",
        mem_limit=MEMORY_LIMIT,
        nano_cpus=NANO_CPUS,
        detach=True,
    )
    try:
        container.reload()
        assert container.status == "running"
        host_config = container.attrs["HostConfig"]
        assert host_config["Memory"] == MEMORY_LIMIT
        assert host_config["NanoCpus"] == NANO_CPUS
        # The kernel, not just the engine's bookkeeping, must hold the limit.
        memory = _cgroup_value(container, "memory.max", "memory/memory.limit_in_bytes")
        assert int(memory) == MEMORY_LIMIT
        quota = _cgroup_value(container, "cpu.max", "cpu/cpu.cfs_quota_us")
        assert quota.split()[0] == "50000"  # 50 ms per 100 ms period
    finally:
        container.remove(force=True)
