"""`hivectl config`: set then get round-trips; bad keys and values change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def hivectl(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env["HOME"] = str(tmp_path)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")

    def run(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"HIVE_CONFIG": str(config)} if config else {}
        return subprocess.run(
            [sys.executable, "-m", "hivectl.cli.main", "config", *args],
            env=env | extra,
            capture_output=True,
            text=True,
            timeout=30,
        )

    return run


def test_set_then_get_round_trips(hivectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert hivectl("set", "nats.url", "nats://10.0.0.5:4222").stdout == "Ok\n"
    assert hivectl("set", "timeout", "12").stdout == "Ok\n"
    assert hivectl("get", "nats.url").stdout == "nats://10.0.0.5:4222\n"
    assert hivectl("get", "timeout").stdout == "12.0\n"
    path = Path(hivectl("path").stdout.strip())
    assert path == tmp_path / "cfg" / "hive" / "hivectl.toml"
    assert 'url = "nats://10.0.0.5:4222"' in path.read_text()


def test_daemon_settings_go_to_the_named_file(hivectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "agent.toml"
    assert hivectl("set", "-p", "nodeagent", "labels.zone", "eu-1", config=target).returncode == 0
    assert (
        hivectl("set", "-p", "nodeagent", "heartbeat_interval", '"5s"', config=target).returncode
        == 0
    )
    assert hivectl("get", "-p", "nodeagent", "labels", config=target).stdout == '{"zone": "eu-1"}\n'
    assert hivectl("get", "-p", "nodeagent", "heartbeat_interval", config=target).stdout == "5.0\n"


def test_unknown_key_is_refused_with_a_suggestion(hivectl) -> None:  # type: ignore[no-untyped-def]
    result = hivectl("set", "timout", "3")
    assert result.returncode == 2
    assert "did you mean 'timeout'" in result.stderr
    assert hivectl("get", "timeout").stdout == "5.0\n"


def test_invalid_value_leaves_the_file_unchanged(hivectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hivectl("set", "timeout", "7")
    path = Path(hivectl("path").stdout.strip())
    before = path.read_text()
    result = hivectl("set", "timeout", "soon")
    assert result.returncode == 2
    assert "invalid value for timeout" in result.stderr
    assert path.read_text() == before


def test_show_masks_secrets(hivectl) -> None:  # type: ignore[no-untyped-def]
    hivectl("set", "nats.token", "s3cret")
    shown = hivectl("show").stdout
    assert "s3cret" not in shown and "**********" in shown


COMMENTED = """\
# My cluster's hivectl settings.

# Slow link: give the requester time.
timeout = "5s"  # seconds
output = "table"

[nats]
# The lab's NATS.
url = "nats://127.0.0.1:4222"  # not the default one
connect_timeout = "2s"

# Logging, quiet by default.
[log]
level = "INFO"
"""


def test_set_changes_one_value_and_keeps_comments_and_layout(hivectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hivectl.toml"
    path.write_text(COMMENTED)
    assert hivectl("set", "nats.url", "nats://10.0.0.5:4222", config=path).stdout == "Ok\n"
    assert hivectl("set", "timeout", "12", config=path).stdout == "Ok\n"
    assert path.read_text() == (
        COMMENTED.replace('url = "nats://127.0.0.1:4222"', 'url = "nats://10.0.0.5:4222"').replace(
            'timeout = "5s"', "timeout = 12"
        )
    )
    assert hivectl("get", "nats.url", config=path).stdout == "nats://10.0.0.5:4222\n"
    assert hivectl("get", "timeout", config=path).stdout == "12.0\n"


def test_set_in_the_shipped_example_changes_only_that_line(hivectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    example = (Path(__file__).resolve().parents[2] / "configs" / "nodeagent.toml").read_text()
    path = tmp_path / "nodeagent.toml"
    path.write_text(example)
    result = hivectl("set", "-p", "nodeagent", "heartbeat_interval", '"5s"', config=path)
    assert result.returncode == 0, result.stderr
    before, after = example.splitlines(), path.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert changed == [('heartbeat_interval = "15s"', 'heartbeat_interval = "5s"')]
    assert hivectl("get", "-p", "nodeagent", "heartbeat_interval", config=path).stdout == "5.0\n"


def test_a_missing_key_is_added_to_its_own_table(hivectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hivectl.toml"
    path.write_text(COMMENTED)
    assert hivectl("set", "nats.token", "s3cret", config=path).returncode == 0
    assert hivectl("set", "log.format", "json", config=path).returncode == 0
    assert hivectl("set", "output", "json", config=path).returncode == 0
    assert path.read_text() == (
        COMMENTED.replace('connect_timeout = "2s"\n', 'connect_timeout = "2s"\ntoken = "s3cret"\n')
        .replace('level = "INFO"\n', 'level = "INFO"\nformat = "json"\n')
        .replace('output = "table"', 'output = "json"')
    )


def test_a_missing_table_is_added_with_its_header(hivectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.toml"
    path.write_text('# my agent\nname = "gpu-1"\n\n[nats]\nurl = "nats://10.0.0.5:4222"\n')
    assert hivectl("set", "-p", "nodeagent", "labels.zone", "eu-1", config=path).returncode == 0
    assert hivectl("set", "-p", "nodeagent", "labels.disk", "ssd", config=path).returncode == 0
    assert path.read_text() == (
        '# my agent\nname = "gpu-1"\n\n[nats]\nurl = "nats://10.0.0.5:4222"\n\n'
        '[labels]\nzone = "eu-1"\ndisk = "ssd"\n'
    )
    labels = hivectl("get", "-p", "nodeagent", "labels", config=path).stdout
    assert labels == '{"zone": "eu-1", "disk": "ssd"}\n'


def test_an_invalid_value_leaves_a_commented_file_as_it_was(hivectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hivectl.toml"
    path.write_text(COMMENTED)
    result = hivectl("set", "nats.connect_timeout", "never", config=path)
    assert result.returncode == 2
    assert "invalid value for nats.connect_timeout" in result.stderr
    assert path.read_text() == COMMENTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hivectl.toml"]


def test_set_keeps_the_files_permissions(hivectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hivectl.toml"
    path.write_text(COMMENTED)
    path.chmod(0o600)
    assert hivectl("set", "nats.token", "s3cret", config=path).returncode == 0
    assert path.stat().st_mode & 0o777 == 0o600
