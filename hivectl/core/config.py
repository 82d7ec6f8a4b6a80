"""Layered configuration for the three programs: defaults < TOML file < HIVE_* env < flags.

One pydantic-settings class per program. The TOML file is the one named by `--config`
(or HIVE_CONFIG), else the program's usual place; a named file that does not exist is
an error, a missing usual file is not. Nested keys come from the environment with `__`:
`HIVE_NATS__URL=nats://10.0.0.5:4222`.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import platformdirs
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hivectl.core.errors import HiveError
from hivectl.core.labels import is_reserved, reserved_error
from hivectl.core.models import ID_PATTERN, Labels
from hivectl.core.subjects import DEFAULT_PREFIX

ACTOR_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters: it travels in a header
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> Any:
    """'15s', '500ms', '2m', '1h', '7d' or a number of seconds, as seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (like 15s, 500ms, 2m)")
        return float(match[1]) * _UNITS[match[2] or "s"]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, allow_inf_nan=False)]


def _parse_size(value: Any) -> Any:
    from hivectl.core.jobs import parse_bytes  # jobs imports config lazily; keep it so

    return parse_bytes(value)


Size = Annotated[int, BeforeValidator(_parse_size), Field(ge=0, le=2**50)]  # bytes; 0: none
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Section(BaseModel):
    # defer_build: hivectl never builds the daemons' sections (see models.Model).
    model_config = ConfigDict(extra="forbid", defer_build=True)


class NatsSettings(Section):
    url: str = "nats://127.0.0.1:4222"
    token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None
    creds_file: Path | None = None  # a NATS .creds file (JWT + nkey seed)
    # A Hive role credentials file ([nats] user/password), as the embedded server writes
    credentials_file: Path | None = None
    connect_timeout: Duration = 2.0
    prefix: str = Field(default=DEFAULT_PREFIX, pattern=r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$")


class EmbeddedNatsSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=4222, ge=0, le=65535)  # 0: any free port
    store_dir: Path | None = None  # default: <data_dir>/nats
    max_payload: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)


class LogSettings(Section):
    level: LogLevel = "INFO"
    format: Literal["auto", "json", "console"] = "auto"  # auto: JSON unless on a terminal


class MetricsSettings(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class JetStreamSettings(Section):
    # Copies of every stream, bucket and object store the requester creates: 1 on the
    # embedded server, 3 on a three-server NATS cluster (at most 5). A starting requester
    # raises lower ones to this and keeps higher ones (with a warning).
    replicas: int = Field(default=1, ge=1, le=5)


class SchedulerSettings(Section):
    # The fair queue ranks owners by their recent usage (CPU-equivalent seconds of
    # their executions): usage this long ago counts half, twice as long ago a quarter.
    fair_share_half_life: Duration = Field(default=3600.0, gt=0)
    # A job that has waited this long for room gets a node held for it, which no other
    # job may use until it fits (small jobs otherwise backfill around it for good);
    # 0: never (plain best-effort backfill).
    backfill_reserve_after: Duration = 60.0
    # A requester that does not lead places the jobs submitted to it while no job waits
    # (requester/jobs/assist.py): more requesters, more placement. false: only the
    # leader places, and a follower keeps less in memory.
    followers_place: bool = True


class HiveSettings(BaseSettings):
    """Common behaviour: HIVE_ env prefix, `__` nesting, unknown keys refused."""

    model_config = SettingsConfigDict(
        env_prefix="HIVE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        defer_build=True,
    )

    nats: NatsSettings = Field(default_factory=NatsSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _toml_file.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def usual_file(cls) -> Path:
        """Where the program looks for its TOML file when none is named."""
        return _system_dir() / f"{cls.program}.toml"

    program: ClassVar[str] = "hive"


def _system_dir() -> Path:
    """/etc/hive for root daemons (as systemd runs them), the user's dir otherwise."""
    return Path("/etc/hive") if os.geteuid() == 0 else Path(platformdirs.user_config_dir("hive"))


def _data_dir(name: str) -> Path:
    """$STATE_DIRECTORY (systemd's StateDirectory=), else /var/lib/hive-<name> as root.

    The root default is the directory the units' `StateDirectory=hive-<name>` makes, so a
    daemon started by hand as root, the same daemon under systemd, and a
    `hive-nodeagent register` typed beside a running agent all use one state dir (one
    identity, one set of credentials). Other users get their own data dir.
    """
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib") / f"hive-{name}"
    return Path(platformdirs.user_data_dir("hive")) / name


class RequesterConfig(HiveSettings):
    program: ClassVar[str] = "requester"
    embedded: EmbeddedNatsSettings = Field(default_factory=EmbeddedNatsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    jetstream: JetStreamSettings = Field(default_factory=JetStreamSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    data_dir: Path = Field(default_factory=lambda: _data_dir("requester"))
    name: str = Field(default="requester", pattern=ID_PATTERN)
    cluster_name: str = Field(default="hive", max_length=64)
    auto_approve: bool = False
    unhealthy_after: Duration = 30.0
    disconnected_after: Duration = 60.0
    health_check_interval: Duration = 1.0
    scheduler_interval: Duration = 1.0
    offer_timeout: Duration = 2.0
    # Several requesters of one cluster: the one holding this lease leads (places jobs,
    # applies updates); the others take over this long after it stops renewing it.
    leader_lease: Duration = Field(default=6.0, ge=0.5)
    # How long a JetStream call may take before the API answers "store unavailable" (or
    # "storage full"): shorter than hivectl's own 5s, so the answer reaches it.
    store_timeout: Duration = 2.0
    # How long a request keeps retrying JetStream calls that fail for a moment (a stream
    # leader being elected on a NATS cluster) before it is answered "store unavailable";
    # also below hivectl's 5s.
    store_deadline: Duration = 4.0
    # A finished job's record is deleted this long after it ended (its logs, events and
    # results expire after 7 days in their streams too); 0 keeps finished jobs forever.
    job_retention: Duration = 7 * 24 * 3600.0
    # The leader deletes the records of nodes UNKNOWN for this long, as far as it has
    # seen (time the requester was down or had just started does not count); 0: never.
    node_prune_after: Duration = 0.0
    max_payload: int = Field(default=1024 * 1024, ge=1024)
    # The NATS `user` role's credentials file, whose user and password `user add` puts
    # in each new user's file; with the embedded server, the one it writes.
    user_credentials_file: Path | None = None

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> RequesterConfig:
        if self.disconnected_after < self.unhealthy_after:
            raise ValueError("disconnected_after must not be shorter than unhealthy_after")
        if self.store_deadline < self.store_timeout:
            raise ValueError("store_deadline must not be shorter than store_timeout")
        return self


class DockerExecutorSettings(Section):
    enabled: bool = True
    host: str | None = None  # default: DOCKER_HOST or the local socket
    # Limits for a job whose spec asks for 0 CPU / 0 memory: a container always gets one.
    default_cpu: float = Field(default=1.0, gt=0, le=1024)
    default_memory: int = Field(default=512 * 1024 * 1024, ge=4 * 1024 * 1024)  # bytes
    # Jobs may ask for the host's network only where the operator allows it.
    allow_host_network: bool = False


class ProcessExecutorSettings(Section):
    enabled: bool = False  # runs jobs as local processes: only where the operator says so


class ExecutorSettings(Section):
    docker: DockerExecutorSettings = Field(default_factory=DockerExecutorSettings)
    process: ProcessExecutorSettings = Field(default_factory=ProcessExecutorSettings)


class NodeAgentConfig(HiveSettings):
    program: ClassVar[str] = "nodeagent"
    name: str | None = Field(default=None, pattern=ID_PATTERN)
    labels: Labels = Field(default_factory=dict)
    # An enrollment token (`hivectl node token create`), sent when the node registers:
    # a valid one approves it at once. Used only at registration.
    token: SecretStr | None = None
    state_dir: Path = Field(default_factory=lambda: _data_dir("nodeagent"))
    work_dir: Path | None = None  # default: <state_dir>/work
    heartbeat_interval: Duration = 15.0
    resource_update_interval: Duration = 30.0
    info_update_interval: Duration = 60.0
    # On shutdown, running jobs get this long to finish before they are killed (CANCELLED).
    job_grace_period: Duration = 10.0
    # Per execution: output beyond this is read and dropped, and the user is told (0: none).
    max_log_bytes: Size = 100 * 1024 * 1024
    # Per execution: output files beyond this total are left out of the results (0: none).
    max_output_bytes: Size = 1024 * 1024 * 1024
    # Executions run at once at most; an offer beyond is declined ("node full"). None:
    # 8 per CPU core (see nodeagent.resources.execution_limit); 0: resources alone.
    max_executions: int | None = Field(default=None, ge=0, le=1_000_000)
    executors: ExecutorSettings = Field(default_factory=ExecutorSettings)
    metrics: MetricsSettings = Field(default_factory=lambda: MetricsSettings(port=9465))

    @field_validator("labels")
    @classmethod
    def _no_reserved_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        # The requester would drop them anyway: refusing them here says so at start-up,
        # where the operator who wrote them is looking.
        for key in labels:
            if is_reserved(key):
                raise ValueError(reserved_error(key))
        return labels

    @property
    def resolved_work_dir(self) -> Path:
        return self.work_dir or self.state_dir / "work"


class ClientConfig(HiveSettings):
    program: ClassVar[str] = "hivectl"

    @classmethod
    def usual_file(cls) -> Path:
        return Path(platformdirs.user_config_dir("hive")) / "hivectl.toml"

    timeout: Duration = 5.0
    output: Literal["table", "wide", "json", "yaml"] = "table"
    # Who you are, as the requester records it with every change you make (`hivectl
    # events`). Default: <os user>@<hostname>. A claim: the credentials prove the role only.
    actor: str | None = Field(default=None, min_length=1, max_length=128, pattern=ACTOR_PATTERN)


_toml_file: ContextVar[Path | None] = ContextVar("hive_toml_file", default=None)
S = TypeVar("S", bound=HiveSettings)


class ConfigError(HiveError, ValueError):
    """A config file that is missing, unreadable or invalid; the message says which key."""


def config_path(cls: type[HiveSettings], config_file: Path | None = None) -> Path:
    """The TOML file `cls` reads: `config_file`, else $HIVE_CONFIG, else its usual place."""
    return config_file or _env_path("HIVE_CONFIG") or cls.usual_file()


def load_config(cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
    """`cls` from its layers. `flags` holds command-line values; None means 'not given'."""
    explicit = config_file or _env_path("HIVE_CONFIG")
    path = explicit or cls.usual_file()
    if explicit is not None and not explicit.is_file():
        raise ConfigError(f"config file {explicit} does not exist")
    overrides = _drop_none(flags)
    read = path if path.is_file() else None
    token = _toml_file.set(read)
    try:
        return cls(**overrides)
    except ValueError as exc:  # ValidationError and TOML decode errors
        where = f"{read}, environment or flags" if read else "environment or flags"
        raise ConfigError(f"invalid configuration ({where}): {_first_line(exc)}") from None
    finally:
        _toml_file.reset(token)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def _first_line(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return str(exc).splitlines()[0]
