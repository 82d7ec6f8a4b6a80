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


def problem(**fields: Any) -> tuple[tuple[Any, ...], str]:
    """The first refusal of a spec: the field's location and the message."""
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(fields)
    first = info.value.errors(include_url=False)[0]
    return tuple(first["loc"]), first["msg"]


PROCESS = {"engine": "process", "command": ["true"]}
INSIDE = "must be a relative path inside the job's work dir, like 'out'"


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        ({**PROCESS, "outputs": ["out", "/etc"]}, ("outputs", 1), f"'/etc' {INSIDE}"),
        ({**PROCESS, "outputs": ["a/../../b"]}, ("outputs", 0), f"'a/../../b' {INSIDE}"),
        ({**PROCESS, "workdir": ".."}, ("workdir",), f"'..' {INSIDE}"),
        ({**PROCESS, "resources": {"gpu": 1}}, ("resources", "gpu"),
         "the process executor does not hand out GPUs (use the docker engine)"),
        ({**PROCESS, "network": "bridge"}, ("network",), "network applies to docker jobs only"),
        ({"engine": "process"}, ("command",), "a process job needs a command"),
        ({"image": "busybox", "workdir": "work"}, ("workdir",),
         "'work' must be an absolute path in the container, like '/work'"),
        ({"image": "busybox", "outputs": ["/run/docker.sock"]}, ("outputs", 0),
         "the Docker socket is not available to jobs"),
        ({"image": ""}, ("image",), "a docker job needs an image"),
        ({"image": "busybox", "privileged": True}, ("privileged",),
         "privileged mode is not allowed"),
    ],
)  # fmt: skip
def test_what_a_node_would_refuse_is_refused_naming_the_field(
    fields: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    assert problem(**fields) == (loc, message)


def test_paths_that_stay_inside_are_fine() -> None:
    spec = JobSpec(**PROCESS, workdir="src/./app", outputs=["out", "a/../b", "./c"])
    assert spec.outputs == ["out", "a/../b", "./c"]
    docker = JobSpec(image="busybox", workdir="/work", outputs=["/outputs", "rel"])
    assert docker.workdir == "/work"


def test_same_as_compares_what_is_sent_and_stored() -> None:
    spec = JobSpec(image="busybox", resources={"cpu": "500m"})
    stored = JobSpec.model_validate(codec.unpack(codec.pack_model(spec)))
    assert spec.same_as(stored) and spec.same_as(JobSpec(image="busybox", resources={"cpu": 0.5}))
    assert not spec.same_as(spec.model_copy(update={"count": 2}))


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


CONTROL = "contains a control character"


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        ({**PROCESS, "command": ["sh", "-c", "a\x00b"]}, ("command", 2), f"{CONTROL} (\\x00)"),
        ({**PROCESS, "command": ["true\r"]}, ("command", 0), f"{CONTROL} (\\x0d)"),
        ({**PROCESS, "env": {"A": "1\x1b[2J"}}, ("env", "A"), f"{CONTROL} (\\x1b)"),
        ({**PROCESS, "env": {"A\x00": "1"}}, ("env", "A\x00", "[key]"), f"{CONTROL} (\\x00)"),
        ({**PROCESS, "name": "web\tserver"}, ("name",), f"{CONTROL} (\\x09)"),
        ({**PROCESS, "name": "\x9b31m"}, ("name",), f"{CONTROL} (\\x9b)"),
        ({"image": "busybox\x00"}, ("image",), f"{CONTROL} (\\x00)"),
        ({**PROCESS, "workdir": "w\n"}, ("workdir",), f"{CONTROL} (\\x0a)"),
        ({**PROCESS, "outputs": ["ok", "o\x7f"]}, ("outputs", 1), f"{CONTROL} (\\x7f)"),
        ({**PROCESS, "constraints": ["zone=a\x07"]}, ("constraints", 0), f"{CONTROL} (\\x07)"),
        # What Python makes of argv bytes that are not UTF-8 (surrogateescape).
        ({**PROCESS, "command": ["cat", "caf\udce9"]}, ("command", 1),
         "is not valid UTF-8 (byte \\xe9)"),
        ({**PROCESS, "name": "\ud800"}, ("name",), "contains a lone surrogate (\\ud800)"),
    ],
)  # fmt: skip
def test_control_characters_are_refused_naming_the_field(
    fields: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    assert problem(**fields) == (loc, message)


def test_args_and_env_values_may_hold_tabs_and_newlines() -> None:
    script = "set -e\nfor f in *; do\n\techo $f\ndone"
    pem = "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"
    spec = JobSpec(**{**PROCESS, "command": ["sh", "-c", script], "env": {"KEY": pem}})
    assert spec.command[2] == script and spec.env["KEY"] == pem


def test_a_nul_in_a_submit_is_refused_by_the_requester_too() -> None:
    spec = {"engine": "process", "command": ["echo", "a\x00b"]}
    data = codec.pack({"kind": "job_submit", "spec": spec})
    with pytest.raises(codec.CodecError) as info:
        codec.decode(data, JobSubmitRequest)
    assert info.value.reason == "spec.command.1: contains a control character (\\x00)"
