"""Building a `JobSpec` for `hivectl job submit` from a spec file and flags.

A file (`-f spec.yaml|.json|.toml`) gives a JobSpec document; flags given on the
command line override its fields: scalars and lists are replaced, while `env` and
`resources` are merged key by key. The result is validated whole, locally, before
anything is sent: a refusal is one line naming the field.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from hivectl.cli.common import EXIT_USAGE, build, fail
from hivectl.core.jobs import Engine, JobSpec, JobType

WHAT = "job spec"
SPEC_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}


class Target(StrEnum):
    ANY = "any"  # a batch job: `count` executions wherever they fit
    ALL = "all"  # an ops job: one execution on every matching node


class Network(StrEnum):
    NONE = "none"
    BRIDGE = "bridge"


@dataclass
class SpecFlags:
    """What `job submit` was given on the command line; None: not given."""

    image: str | None = None
    command: list[str] = field(default_factory=list)
    engine: Engine | None = None
    name: str | None = None
    target: Target | None = None
    cpu: str | None = None
    memory: str | None = None
    disk: str | None = None
    gpu: int | None = None
    env: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    count: int | None = None
    timeout: str | None = None
    queue_timeout: str | None = None
    retries: int | None = None
    network: Network | None = None
    outputs: list[str] = field(default_factory=list)


def load_spec_file(path: Path) -> dict[str, Any]:
    """A spec document as a dict; also accepts a whole job record (`spec:` inside)."""
    import yaml  # here: 15 ms of imports that only a spec file needs

    kind = SPEC_FORMATS.get(path.suffix.lower())
    if kind is None:
        fail(f"cannot read job spec {path}: use a .yaml, .yml, .json or .toml file", EXIT_USAGE)
    try:
        text = path.read_text(encoding="utf-8")
        data = _parse(text, kind)
    except OSError as exc:
        fail(f"cannot read job spec {path}: {exc.strerror or exc}", EXIT_USAGE)
    except (ValueError, yaml.YAMLError) as exc:  # JSON and TOML errors are ValueErrors
        fail(
            f"cannot read job spec {path}: not valid {kind.upper()}: {_first_line(exc)}", EXIT_USAGE
        )
    if isinstance(data, dict) and isinstance(data.get("spec"), dict) and "job_id" in data:
        data = data["spec"]  # `hivectl job describe -o yaml` output, submitted again
    if not isinstance(data, dict):
        fail(f"invalid {WHAT}: {path} must hold a mapping of JobSpec fields", EXIT_USAGE)
    return data


def _parse(text: str, kind: str) -> Any:
    if kind == "json":
        return json.loads(text)
    if kind == "toml":
        return tomllib.loads(text)
    import yaml

    return yaml.safe_load(text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def flag_fields(flags: SpecFlags, engine: Engine) -> dict[str, Any]:
    """The JobSpec fields the flags set (only those given)."""
    command = list(flags.command)
    image = flags.image
    if engine is Engine.PROCESS and image is not None:
        # `--engine process -- CMD ARGS`: the first positional word is the command.
        command, image = [image, *command], None
    fields: dict[str, Any] = {
        "name": flags.name,
        "engine": flags.engine.value if flags.engine else None,
        "image": image,
        "command": command or None,
        "type": (JobType.OPS if flags.target is Target.ALL else JobType.BATCH).value
        if flags.target
        else None,
        "constraints": flags.constraints or None,
        "count": flags.count,
        "timeout": flags.timeout,
        "queue_timeout": flags.queue_timeout,
        "retries": flags.retries,
        "network": flags.network.value if flags.network else None,
        "outputs": flags.outputs or None,
    }
    resources = {"cpu": flags.cpu, "memory": flags.memory, "disk": flags.disk, "gpu": flags.gpu}
    fields["resources"] = {k: v for k, v in resources.items() if v is not None} or None
    fields["env"] = parse_env(flags.env) or None
    return {key: value for key, value in fields.items() if value is not None}


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"invalid {WHAT}: env: {pair!r} is not KEY=VALUE", EXIT_USAGE)
        env[key] = value
    return env


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`; the mappings `env` and `resources` merge key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if key in ("env", "resources") and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def build_spec(flags: SpecFlags, file: Path | None) -> JobSpec:
    """The validated JobSpec from the file (if any) with the flags over it."""
    base = load_spec_file(file) if file is not None else {}
    engine = flags.engine or _engine_of(base)
    data = merge(base, flag_fields(flags, engine))
    return build(JobSpec, data, WHAT)


def _engine_of(data: dict[str, Any]) -> Engine:
    try:
        return Engine(data.get("engine", Engine.DOCKER))
    except ValueError:
        return Engine.DOCKER  # validation of the whole spec names the bad engine


# -- the flags of `job submit` ---------------------------------------------------------


def _opt(*names: str, metavar: str, help: str) -> Any:
    return typer.Option(*names, metavar=metavar, help=help, show_default=False)


ImageArgument = Annotated[
    str | None,
    typer.Argument(metavar="IMAGE", help="Docker image to run.", show_default=False),
]
CommandArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[-- CMD ARGS...]",
        help="Command and arguments, after `--` (all the words, with --engine process).",
        show_default=False,
    ),
]
FileOption = Annotated[
    Path | None,
    _opt("--file", "-f", metavar="PATH", help="JobSpec document (.yaml, .json, .toml)."),
]
EngineOption = Annotated[
    Engine | None,
    typer.Option(
        "--engine", case_sensitive=False, help="docker (default) or process.", show_default=False
    ),
]
NameOption = Annotated[str | None, _opt("--name", metavar="NAME", help="A name for the job.")]
CpuOption = Annotated[str | None, _opt("--cpu", metavar="CPU", help="CPU cores: 0.5 or 500m.")]
MemoryOption = Annotated[
    str | None, _opt("--memory", metavar="SIZE", help="Memory: 512MiB, 2GB, 1Gi.")
]
DiskOption = Annotated[str | None, _opt("--disk", metavar="SIZE", help="Disk: 512MiB, 2GB.")]
GpuOption = Annotated[int | None, _opt("--gpu", metavar="N", help="Number of GPUs.")]
EnvOption = Annotated[
    list[str] | None,
    _opt("--env", "-e", metavar="KEY=VALUE", help="Environment variable (repeat)."),
]
ConstraintOption = Annotated[
    list[str] | None,
    _opt(
        "--constraint",
        "-l",
        metavar="SELECTOR",
        help="Node labels to match (repeat): k=v, k!=v, 'k in (a,b)', k.",
    ),
]
CountOption = Annotated[
    int | None, _opt("--count", metavar="N", help="Executions of a batch job (default 1).")
]
TargetOption = Annotated[
    Target | None,
    typer.Option(
        "--target",
        case_sensitive=False,
        help="any (default): `count` executions; all: one on every matching node.",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    str | None,
    _opt("--timeout", metavar="DURATION", help="Execution timeout: 30s, 5m (default none)."),
]
QueueTimeoutOption = Annotated[
    str | None,
    _opt("--queue-timeout", metavar="DURATION", help="How long it may wait for a node (5m)."),
]
RetriesOption = Annotated[
    int | None, _opt("--retries", metavar="N", help="New attempts after a failure (0).")
]
NetworkOption = Annotated[
    Network | None,
    typer.Option(
        "--network",
        case_sensitive=False,
        help="Docker network: none (default) or bridge.",
        show_default=False,
    ),
]
OutputsOption = Annotated[
    list[str] | None,
    _opt("--output", metavar="PATH", help="Path to collect as a result (repeat)."),
]
