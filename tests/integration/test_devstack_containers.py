"""devstack removes the job containers its agents left, and only those."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hivectl.cli.stackprocs import remove_left_containers
from tests.support.dockerd import PrivateDockerd

pytestmark = pytest.mark.docker


def test_containers_jobs_left_are_removed_and_no_others(
    docker_engine: PrivateDockerd, busybox_image: str
) -> None:
    client = docker_engine.client()

    def container(node: str, name: str) -> str:
        labels = {"hive.node": node, "hive.job": "j-0123456789abcdef", "hive.exec": name}
        made = client.containers.create(busybox_image, ["sleep", "60"], labels=labels, name=name)
        return str(made.id)

    older = container("node-1", "from-an-earlier-stack")
    since = datetime.now(UTC)  # Created has nanoseconds: the next ones are after this
    left = [container("node-1", "left-by-node-1"), container("node-2", "left-by-node-2")]
    foreign = container("db-7", "another-clusters-job")
    client.containers.get(left[0]).start()
    said: list[str] = []
    try:
        removed = remove_left_containers(
            ["node-1", "node-2"], since, docker_engine.base_url, said.append
        )
        assert removed == 2 and not said
        remaining = {c.id for c in client.containers.list(all=True)}
        assert not remaining & set(left)
        assert {older, foreign} <= remaining
    finally:
        for made in client.containers.list(all=True, filters={"label": "hive.job"}):
            made.remove(force=True)
        client.close()


def test_an_unreachable_engine_is_one_line_not_a_failure() -> None:
    said: list[str] = []
    host = "unix:///nonexistent/docker.sock"
    assert remove_left_containers(["node-1"], datetime.now(UTC), host, said.append) == 0
    assert len(said) == 1 and said[0].startswith("Could not look for containers jobs left")
