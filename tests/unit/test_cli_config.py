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
