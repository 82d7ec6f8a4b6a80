"""Building a `JobSpec` for `hivectl job submit` from a spec file and flags.

A file (`-f spec.yaml|.json|.toml`) gives a JobSpec document; flags given on the
command line override its fields: scalars and lists are replaced, while `env` and
`resources` are merged key by key. The result is validated whole, locally, before
anything is sent: a refusal is one line naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from hivectl.cli.common import EXIT_USAGE, describe_problem, fail
from hivectl.cli.specfile import SpecFile, load_spec_files
from hivectl.core.jobs import Engine, JobSpec, JobType

WHAT = "job spec"


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
    min_reliability: float | None = None
    network: Network | None = None
    outputs: list[str] = field(default_factory=list)
    priority: int | None = None


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
        "min_reliability": flags.min_reliability,
        "network": flags.network.value if flags.network else None,
        "outputs": flags.outputs or None,
        "priority": flags.priority,
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


def build_specs(flags: SpecFlags, file: Path | None) -> tuple[list[JobSpec], bool]:
    """The validated JobSpecs of the file (one without a file), each with the flags
    over it; and whether the file holds several jobs (a YAML stream, a list)."""
    if file is None:
        return [build_spec(flags, None)], False
    files = load_spec_files(file)
    return [build_spec(flags, spec_file) for spec_file in files], files[0].index is not None


def build_spec(flags: SpecFlags, spec_file: SpecFile | None) -> JobSpec:
    """The validated JobSpec from the file (if any) with the flags over it."""
    base = spec_file.data if spec_file is not None else {}
    engine = flags.engine or _engine_of(base)
    overrides = flag_fields(flags, engine)
    try:
        return JobSpec.model_validate(merge(base, overrides))
    except ValidationError as exc:
        loc = tuple(exc.errors(include_url=False)[0]["loc"])
        if spec_file is None or _from_flags(loc, overrides):
            fail(f"invalid {WHAT}: {describe_problem(exc)}", EXIT_USAGE)
        fail(f"{spec_file.where(loc)}: {describe_problem(exc)}", EXIT_USAGE)


def _from_flags(loc: tuple[str | int, ...], overrides: dict[str, Any]) -> bool:
    """Whether the field at `loc` took its value from a flag rather than the file."""
    if not loc or loc[0] not in overrides:
        return False
    if loc[0] in ("env", "resources"):  # merged key by key: the file may set the others
        return len(loc) > 1 and loc[1] in overrides[str(loc[0])]
    return True


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
PriorityOption = Annotated[
    int | None,
    _opt(
        "--priority",
        metavar="N",
        help="0-100 (default 50): waiting work of higher priority is placed first.",
    ),
]
RetriesOption = Annotated[
    int | None, _opt("--retries", metavar="N", help="New attempts after a failure (0).")
]
MinReliabilityOption = Annotated[
    float | None,
    typer.Option(
        "--min-reliability",
        metavar="SCORE",
        min=0.0,
        max=1.0,
        show_default=False,
        help="Run only on nodes whose reliability (node describe) is at least this, 0 to 1 "
        "(default 0: any; a new node scores 0.9).",
    ),
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
