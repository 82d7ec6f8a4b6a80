"""Configuration layers: default < TOML file < HIVE_* env < flags, for all three programs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hivectl.core.config import (
    ClientConfig,
    ConfigError,
    HiveSettings,
    NodeAgentConfig,
    RequesterConfig,
    load_config,
    parse_duration,
)

PROGRAMS: list[type[HiveSettings]] = [RequesterConfig, NodeAgentConfig, ClientConfig]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No HIVE_* variable, /etc/hive or user config file of this machine leaks in.

    Each program's usual file is a path under tmp_path that does not exist unless a
    test writes it; that path is returned.
    """
    for name in list(os.environ):
        if name.startswith("HIVE_") or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    usual_dir = tmp_path / "usual"
    for cls in PROGRAMS:
        path = usual_dir / f"{cls.program}.toml"
        monkeypatch.setattr(cls, "usual_file", classmethod(lambda _cls, p=path: p))
    yield usual_dir


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass(frozen=True)
class Layered:
    """One setting of one program, with a distinct value at each layer."""

    cls: type[HiveSettings]
    key: str
    default: Any
    toml: str  # the TOML line
    from_toml: Any
    env: str  # the environment value of HIVE_<KEY>
    from_env: Any
    flag: Any
    from_flag: Any

    @property
    def env_name(self) -> str:
        return f"HIVE_{self.key.upper()}"

    def __str__(self) -> str:
        return f"{self.cls.__name__}.{self.key}"


LAYERED = [
    Layered(
        RequesterConfig,
        "unhealthy_after",
        30.0,
        'unhealthy_after = "20s"',
        20.0,
        "10s",
        10.0,
        "5s",
        5.0,
    ),
    Layered(
        RequesterConfig,
        "auto_approve",
        False,
        "auto_approve = true",
        True,
        "false",
        False,
        True,
        True,
    ),
    Layered(
        RequesterConfig,
        "cluster_name",
        "hive",
        'cluster_name = "from-file"',
        "from-file",
        "from-env",
        "from-env",
        "from-flag",
        "from-flag",
    ),
    Layered(
        NodeAgentConfig,
        "heartbeat_interval",
        15.0,
        "heartbeat_interval = 7",
        7.0,
        "3s",
        3.0,
        "500ms",
        0.5,
    ),
    Layered(
        NodeAgentConfig,
        "name",
        None,
        'name = "file-node"',
        "file-node",
        "env-node",
        "env-node",
        "flag-node",
        "flag-node",
    ),
    Layered(ClientConfig, "timeout", 5.0, 'timeout = "2m"', 120.0, "15", 15.0, 1.5, 1.5),
    Layered(
        ClientConfig, "output", "table", 'output = "json"', "json", "yaml", "yaml", "wide", "wide"
    ),
]


@pytest.mark.parametrize("case", LAYERED, ids=str)
def test_each_layer_overrides_the_one_below(
    case: Layered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = write(tmp_path / "given.toml", case.toml + "\n")

    assert getattr(load_config(case.cls), case.key) == case.default
    assert getattr(load_config(case.cls, config_file=conf), case.key) == case.from_toml

    monkeypatch.setenv(case.env_name, case.env)
    assert getattr(load_config(case.cls), case.key) == case.from_env  # env without a file
    assert getattr(load_config(case.cls, config_file=conf), case.key) == case.from_env

    flags = {case.key: case.flag}
    assert getattr(load_config(case.cls, config_file=conf, **flags), case.key) == case.from_flag
    monkeypatch.delenv(case.env_name)
    assert getattr(load_config(case.cls, config_file=conf, **flags), case.key) == case.from_flag
    assert getattr(load_config(case.cls, **flags), case.key) == case.from_flag


@pytest.mark.parametrize("cls", PROGRAMS, ids=lambda c: c.__name__)
def test_nested_keys_merge_across_layers(
    cls: type[HiveSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = write(
        tmp_path / "given.toml",
        '[nats]\nurl = "nats://file:4222"\nprefix = "lab"\nconnect_timeout = "3s"\n'
        '[log]\nlevel = "DEBUG"\n',
    )
    monkeypatch.setenv("HIVE_NATS__URL", "nats://env:4222")
    monkeypatch.setenv("HIVE_NATS__TOKEN", "s3cret")
    monkeypatch.setenv("HIVE_LOG__FORMAT", "json")

    config = load_config(cls, config_file=conf, nats={"connect_timeout": "500ms"})

    assert config.nats.url == "nats://env:4222"  # env over file
    assert config.nats.token is not None and config.nats.token.get_secret_value() == "s3cret"
    assert config.nats.prefix == "lab"  # file, untouched by env and flags
    assert config.nats.connect_timeout == 0.5  # flag over file
    assert config.log.level == "DEBUG"
    assert config.log.format == "json"
    assert "s3cret" not in repr(config)

    flagged = load_config(cls, config_file=conf, nats={"url": "nats://flag:4222"})
    assert flagged.nats.url == "nats://flag:4222"
    assert flagged.nats.connect_timeout == 3.0


@pytest.mark.parametrize("cls", PROGRAMS, ids=lambda c: c.__name__)
def test_flags_set_to_none_are_not_given(
    cls: type[HiveSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIVE_NATS__URL", "nats://env:4222")
    config = load_config(cls, nats={"url": None, "token": None}, log=None)
    assert config.nats.url == "nats://env:4222"
    assert config.nats.token is None
    assert config.log.level == "INFO"


def test_defaults() -> None:
    requester = load_config(RequesterConfig)
    assert requester.nats.url == "nats://127.0.0.1:4222"
    assert requester.nats.prefix == "hive"
    assert requester.auto_approve is False
    assert (requester.unhealthy_after, requester.disconnected_after) == (30.0, 60.0)
    assert requester.embedded.enabled is True

    agent = load_config(NodeAgentConfig)
    assert agent.heartbeat_interval == 15.0
    assert agent.resource_update_interval == 30.0
    assert agent.info_update_interval == 60.0
    assert agent.executors.docker.enabled is True
    assert agent.executors.process.enabled is False  # off unless the operator says so
    assert agent.resolved_work_dir == agent.state_dir / "work"

    client = load_config(ClientConfig)
    assert (client.timeout, client.output) == (5.0, "table")


# -- which file ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", PROGRAMS, ids=lambda c: c.__name__)
def test_hive_config_env_names_the_file(
    cls: type[HiveSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    write(isolated / f"{cls.program}.toml", '[log]\nlevel = "ERROR"\n')
    named = write(tmp_path / "named.toml", '[log]\nlevel = "WARNING"\n')
    flagged = write(tmp_path / "flagged.toml", '[log]\nlevel = "DEBUG"\n')

    assert load_config(cls).log.level == "ERROR"  # the usual file
    monkeypatch.setenv("HIVE_CONFIG", str(named))
    assert load_config(cls).log.level == "WARNING"  # HIVE_CONFIG over the usual file
    assert load_config(cls, config_file=flagged).log.level == "DEBUG"  # --config over both


@pytest.mark.parametrize("cls", PROGRAMS, ids=lambda c: c.__name__)
def test_a_named_file_that_is_missing_is_an_error(
    cls: type[HiveSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(cls, config_file=missing)
    assert str(missing) in str(info.value)

    monkeypatch.setenv("HIVE_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(cls)


@pytest.mark.parametrize("cls", PROGRAMS, ids=lambda c: c.__name__)
def test_a_missing_usual_file_is_fine(cls: type[HiveSettings], isolated: Path) -> None:
    assert not (isolated / f"{cls.program}.toml").exists()
    assert load_config(cls).log.level == "INFO"


def test_usual_files_are_per_program() -> None:
    names = {cls.usual_file().name for cls in PROGRAMS}
    assert names == {"requester.toml", "nodeagent.toml", "hivectl.toml"}


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", PROGRAMS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n", "bogus"),
        ("[nats]\nurll = 'nats://x:4222'\n", "nats.urll"),
        ("[log]\nlevel = 'INFO'\ncolour = true\n", "log.colour"),
    ],
)
def test_unknown_keys_in_the_file_are_errors(
    cls: type[HiveSettings], text: str, key: str, tmp_path: Path
) -> None:
    conf = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(cls, config_file=conf)
    message = str(info.value)
    assert key in message and str(conf) in message
    assert "\n" not in message


def test_unknown_keys_elsewhere_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="heartbeat_intervall"):
        load_config(NodeAgentConfig, heartbeat_intervall=3)
    monkeypatch.setenv("HIVE_NATS__URLL", "nats://x:4222")
    with pytest.raises(ConfigError, match=r"nats\.urll"):
        load_config(ClientConfig)


def test_a_key_of_another_program_is_unknown(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", "auto_approve = true\n")
    assert load_config(RequesterConfig, config_file=conf).auto_approve is True
    with pytest.raises(ConfigError, match="auto_approve"):
        load_config(NodeAgentConfig, config_file=conf)


@pytest.mark.parametrize("bad", ["soon", "10 parsecs", "-5s", "5d", "1.2.3s", "", "s"])
def test_bad_durations_are_errors(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVE_UNHEALTHY_AFTER", bad)
    with pytest.raises(ConfigError, match="unhealthy_after"):
        load_config(RequesterConfig)


def test_bad_duration_in_a_file_names_key_and_value(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", 'heartbeat_interval = "fortnightly"\n')
    with pytest.raises(ConfigError) as info:
        load_config(NodeAgentConfig, config_file=conf)
    assert "heartbeat_interval" in str(info.value) and "fortnightly" in str(info.value)


def test_negative_numeric_duration_is_an_error() -> None:
    with pytest.raises(ConfigError, match="timeout"):
        load_config(ClientConfig, timeout=-1)


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ("[nats\nurl=1\n", None),  # not TOML
        ('output = "xml"\n', "output"),
        ('name = "Not A Node"\n', "name"),
        ("[embedded]\nport = 70000\n", None),
    ],
)
def test_invalid_files_are_config_errors(bad: str, key: str | None, tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", bad)
    owners: dict[str, type[HiveSettings]] = {"output": ClientConfig, "name": NodeAgentConfig}
    cls = owners.get(key or "", RequesterConfig)
    with pytest.raises(ConfigError) as info:
        load_config(cls, config_file=conf)
    assert str(conf) in str(info.value)
    if key:
        assert key in str(info.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("2m", 120.0),
        ("15s", 15.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1.5s", 1.5),
        (" 30s ", 30.0),
        ("15", 15.0),
        (15, 15.0),
        (0.25, 0.25),
    ],
)
def test_durations(value: Any, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(RequesterConfig, health_check_interval=value)
    assert config.health_check_interval == pytest.approx(seconds)
    assert isinstance(config.health_check_interval, float)
    if isinstance(value, str):
        assert parse_duration(value) == pytest.approx(seconds)
        monkeypatch.setenv("HIVE_HEARTBEAT_INTERVAL", value)
        assert load_config(NodeAgentConfig).heartbeat_interval == pytest.approx(seconds)


def test_labels_come_from_the_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write(tmp_path / "agent.toml", '[labels]\nzone = "eu-1"\ngpu = "a100"\n')
    assert load_config(NodeAgentConfig, config_file=conf).labels == {"zone": "eu-1", "gpu": "a100"}
    monkeypatch.setenv("HIVE_LABELS", '{"zone": "us-2"}')
    # Maps merge key by key across layers (pydantic-settings' deep update); the env wins.
    assert load_config(NodeAgentConfig, config_file=conf).labels["zone"] == "us-2"
    flagged = load_config(NodeAgentConfig, config_file=conf, labels={"zone": "ap-3"})
    assert flagged.labels["zone"] == "ap-3"


def test_requester_thresholds_must_be_in_order() -> None:
    with pytest.raises(ConfigError, match="disconnected_after must not be shorter"):
        load_config(RequesterConfig, unhealthy_after="90s")
