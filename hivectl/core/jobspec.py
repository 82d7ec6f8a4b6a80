"""The job spec: what an operator submits, with the rules every part of Hive checks.

hivectl (before sending), the requester (on submit) and every node (on each offer)
validate a spec with this one model, so whatever a node would refuse a spec for is
refused at submit, naming the field. Quantities are parsed the way operators write
them ("500m", "512MiB", "5m").
"""

from __future__ import annotations

import posixpath
import re
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    BeforeValidator,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from hivectl.core.models import Model, Resources, ShortText
from hivectl.core.selectors import SelectorError, parse_selector


class JobType(StrEnum):
    BATCH = "batch"  # `count` executions
    OPS = "ops"  # one execution on every matching node


class Engine(StrEnum):
    DOCKER = "docker"
    PROCESS = "process"


# -- quantities ------------------------------------------------------------------------
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def parse_bytes(value: Any) -> Any:
    """'512MiB', '2GB', '1Gi', '100M' or a number of bytes, as bytes (IEC when 'i')."""
    if not isinstance(value, str):
        return value
    match = _BYTES.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size (like 512MiB, 2GB, 1Gi)")
    number, unit = float(match[1]), (match[2] or "B").upper()
    if unit == "B":
        return int(number)
    base = 1024 if "I" in unit else 1000
    return int(number * base ** _POWERS[unit[0]])


def parse_cpu(value: Any) -> Any:
    """'500m', '0.5' or a number of cores, as cores."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a CPU amount (like 0.5 or 500m)") from None
    return value


def parse_seconds(value: Any) -> Any:
    from hivectl.core.config import parse_duration  # config imports models; keep it lazy

    return parse_duration(value)


Cpu = Annotated[float, BeforeValidator(parse_cpu), Field(ge=0, le=1024, allow_inf_nan=False)]
Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0, le=2**62)]
Seconds = Annotated[
    float, BeforeValidator(parse_seconds), Field(ge=0, le=30 * 24 * 3600, allow_inf_nan=False)
]

# -- text ------------------------------------------------------------------------------
# No text of a spec may hold a control character: NUL cannot reach exec at all, and the
# others are a mistake or an attack on whoever reads the spec back (`job list`).
# Arguments and env values may hold tabs and newlines, which a script given to `sh -c`
# or a multi-line value (a PEM key) needs; a carriage return is refused there too, as it
# only comes from a CRLF file and breaks the script it lands in. Lone surrogates are
# what Python makes of bytes that are not UTF-8 (a file name in argv): no message can
# carry them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_LAYOUT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _refuse_control(pattern: re.Pattern[str]) -> Any:
    def check(value: Any) -> Any:
        found = pattern.search(value) if isinstance(value, str) else None
        if found is None:
            return value
        code = ord(found[0])
        if 0xDC80 <= code <= 0xDCFF:  # how surrogateescape keeps a byte that is not UTF-8
            why = f"is not valid UTF-8 (byte \\x{code - 0xDC00:02x})"
        elif 0xD800 <= code <= 0xDFFF:
            why = f"contains a lone surrogate (\\u{code:04x})"
        else:
            why = f"contains a control character (\\x{code:02x})"
        raise PydanticCustomError("control_character", why)

    return check


# Before the type's own checks, so a NUL in an env name is named as such.
NoControl = BeforeValidator(_refuse_control(_CONTROL))
Text = Annotated[str, NoControl, StringConstraints(strict=True)]
EnvName = Annotated[
    str, NoControl, StringConstraints(strict=True, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
]
Arg = Annotated[
    str,
    BeforeValidator(_refuse_control(_CONTROL_BUT_LAYOUT)),
    StringConstraints(strict=True, max_length=8192),
]
PathText = Annotated[str, NoControl, StringConstraints(strict=True, min_length=1, max_length=1024)]
Selector = Annotated[ShortText, NoControl]


class ResourceRequest(Model):
    cpu: Cpu = 0.0
    memory: Bytes = 0
    disk: Bytes = 0
    gpu: Annotated[int, Strict(), Field(ge=0, le=64)] = 0

    def as_resources(self) -> Resources:
        return Resources(cpu=self.cpu, memory=self.memory, disk=self.disk, gpu=self.gpu)


# Fields of other schedulers' specs (Docker, Compose, Kubernetes) that would reach
# outside the container. Hive has no such fields; a spec that asks is refused by name
# rather than having them silently dropped.
REFUSED_FIELDS = {
    "privileged": "privileged mode is not allowed",
    "cap_add": "extra capabilities are not allowed",
    "capabilities": "extra capabilities are not allowed",
    "devices": "device access is not allowed (ask for GPUs with resources.gpu)",
    "mounts": "host mounts are not allowed (collect results with outputs)",
    "volumes": "host mounts are not allowed (collect results with outputs)",
    "binds": "host mounts are not allowed (collect results with outputs)",
    "host_path": "host paths are not allowed",
    "pid_mode": "sharing the host's PID namespace is not allowed",
    "ipc_mode": "sharing the host's IPC namespace is not allowed",
    "user_ns_mode": "leaving the user namespace is not allowed",
    "security_opt": "changing security options is not allowed",
}
_DOCKER_SOCKET = "docker.sock"
Loc = tuple[str | int, ...]


def refuse(loc: Loc, reason: str, value: Any) -> NoReturn:
    """Refuse a spec naming the field at `loc` (a model check can name the field it
    found wrong, so a spec file's error points at that field's line)."""
    error = PydanticCustomError("value_error", "{reason}", {"reason": reason})
    details = InitErrorDetails(type=error, loc=loc, input=value)
    raise ValidationError.from_exception_data("JobSpec", [details])


def inside_work_dir(path: str) -> bool:
    """True when `path` is relative and stays inside the directory it is taken from."""
    if not path or posixpath.isabs(path):
        return False
    resolved = posixpath.normpath(path)
    return resolved != ".." and not resolved.startswith("../")


# A batch's executions are placed, stored and listed one key each, so nothing grows
# with `count` but the bucket; 10,000 bounds what one submit can ask of a cluster
# (Slurm's default MaxArraySize is 1,001, raised by sites to 10,000s) and keeps the
# requester's in-memory view of one job under a few MiB.
MAX_COUNT = 10_000


class JobSpec(Model):
    """What an operator asks for; validated whole before anything is stored.

    hivectl, the requester and every node validate specs with this one model, so a
    rule a node would refuse a spec by is a rule the spec is refused by at submit.
    Only what depends on one node (its enabled engines, its settings, its free
    capacity) is left to the node's answer to an offer.
    """

    @model_validator(mode="before")
    @classmethod
    def _refuse_escapes(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in REFUSED_FIELDS.items():
                if data.get(name) not in (None, False, "", [], {}):
                    refuse((name,), why, data[name])
        return data

    name: Annotated[Text, StringConstraints(max_length=128)] = ""
    type: JobType = JobType.BATCH
    engine: Engine = Engine.DOCKER
    image: Annotated[Text, StringConstraints(max_length=512)] = ""
    command: Annotated[list[Arg], Field(max_length=256)] = Field(default_factory=list)
    env: Annotated[dict[EnvName, Arg], Field(max_length=256)] = Field(default_factory=dict)
    workdir: Annotated[Text, StringConstraints(max_length=1024)] = ""
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    constraints: Annotated[list[Selector], Field(max_length=32)] = Field(default_factory=list)
    count: Annotated[int, Strict(), Field(ge=1, le=MAX_COUNT)] = 1
    timeout: Seconds = 0.0  # execution timeout; 0: none
    queue_timeout: Seconds = 300.0  # how long it may wait for a node
    retries: Annotated[int, Strict(), Field(ge=0, le=10)] = 0
    network: Literal["none", "bridge", "host"] = "none"
    outputs: Annotated[list[PathText], Field(max_length=16)] = Field(default_factory=list)
    # The fair queue orders waiting work by priority first (higher first), then by
    # its owner's recent usage.
    priority: Annotated[int, Strict(), Field(ge=0, le=100)] = 50
    # Only nodes whose record of finished work scores at least this may run it.
    min_reliability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        for i, path in enumerate(self.outputs):
            if _DOCKER_SOCKET in path:
                refuse(("outputs", i), "the Docker socket is not available to jobs", path)
        if _DOCKER_SOCKET in self.workdir:
            refuse(("workdir",), "the Docker socket is not available to jobs", self.workdir)
        if self.engine is Engine.DOCKER:
            self._docker_rules()
        else:
            self._process_rules()
        try:
            parse_selector(",".join(self.constraints))
        except SelectorError as exc:
            refuse(("constraints",), str(exc), self.constraints)
        return self

    def _docker_rules(self) -> None:
        if not self.image:
            refuse(("image",), "a docker job needs an image", self.image)
        if self.workdir and not self.workdir.startswith("/"):
            # Docker refuses to create such a container, on every node.
            why = f"{self.workdir!r} must be an absolute path in the container, like '/work'"
            refuse(("workdir",), why, self.workdir)

    def _process_rules(self) -> None:
        if not self.command:
            refuse(("command",), "a process job needs a command", self.command)
        if self.network != "none":
            refuse(("network",), "network applies to docker jobs only", self.network)
        if self.resources.gpu:
            why = "the process executor does not hand out GPUs (use the docker engine)"
            refuse(("resources", "gpu"), why, self.resources.gpu)
        where = "must be a relative path inside the job's work dir, like 'out'"
        if self.workdir and not inside_work_dir(self.workdir):
            refuse(("workdir",), f"{self.workdir!r} {where}", self.workdir)
        for i, path in enumerate(self.outputs):
            if not inside_work_dir(path):
                refuse(("outputs", i), f"{path!r} {where}", path)

    @property
    def selector(self) -> str:
        return ",".join(self.constraints)

    def same_as(self, other: JobSpec) -> bool:
        """The same request, field by field, as it travels and is stored."""
        return self.model_dump(mode="json") == other.model_dump(mode="json")
