"""Job specs: quantities parse the way operators write them, and nothing escapes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hivectl.core import codec
from hivectl.core.jobs import JobSpec, JobSubmitRequest, parse_bytes, parse_cpu


@pytest.mark.parametrize(
    ("text", "cores"), [("500m", 0.5), ("0.5", 0.5), ("2", 2.0), (1, 1), ("250m", 0.25)]
)
def test_cpu(text: Any, cores: float) -> None:
    assert parse_cpu(text) == pytest.approx(cores)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1Gi", 2**30), ("100", 100), (7, 7)],
)
def test_bytes(text: Any, size: int) -> None:
    assert parse_bytes(text) == size


def refused(**fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"image": "busybox", **fields})
    return str(info.value)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"privileged": True}, "privileged mode is not allowed"),
        ({"volumes": ["/:/host"]}, "host mounts are not allowed"),
        ({"mounts": [{"source": "/etc"}]}, "host mounts are not allowed"),
        ({"binds": ["/var/run/docker.sock:/var/run/docker.sock"]}, "host mounts"),
        ({"devices": ["/dev/sda"]}, "device access is not allowed"),
        ({"cap_add": ["SYS_ADMIN"]}, "extra capabilities are not allowed"),
        ({"pid_mode": "host"}, "PID namespace"),
        ({"outputs": ["/var/run/docker.sock"]}, "Docker socket"),
        ({"resources": {"cpu": "5x"}}, "is not a CPU amount"),
        ({"resources": {"memory": "lots"}}, "is not a size"),
        ({"resources": {"cpu": -1}}, "greater than or equal to 0"),
        ({"constraints": ["zone in (a"]}, "unbalanced"),
        ({"engine": "process", "command": []}, "a process job needs a command"),
        ({"image": ""}, "a docker job needs an image"),
        ({"count": 0}, "count"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"timeout": "forever"}, "is not a duration"),
    ],
)
def test_refused_with_the_reason(fields: dict[str, Any], reason: str) -> None:
    assert reason in refused(**fields)


def test_harmless_false_values_are_accepted() -> None:
    spec = JobSpec.model_validate({"image": "busybox", "privileged": False, "volumes": []})
    assert spec.image == "busybox"


def test_a_hostile_submit_is_refused_by_the_codec_naming_the_field() -> None:
    data = codec.pack({"kind": "job_submit", "spec": {"image": "x", "privileged": True}})
    with pytest.raises(codec.CodecError) as info:
        codec.decode(data, JobSubmitRequest)
    assert info.value.code == "invalid"
    assert "privileged mode is not allowed" in info.value.reason


def test_host_network_only_where_the_node_allows_it() -> None:
    from hivectl.core.config import DockerExecutorSettings
    from nodeagent.executors.docker import DockerExecutor

    spec = JobSpec(image="busybox", network="host")
    refusal = DockerExecutor(DockerExecutorSettings(), "node-1").refusal(spec)
    assert refusal == "host networking is not allowed on this node"
    allowed = DockerExecutor(DockerExecutorSettings(allow_host_network=True), "node-1")
    assert allowed.refusal(spec) is None
