"""The installed console scripts start and explain themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["hivectl", "--help"], ["node", "devstack", "--nats-url"]),
        (["hivectl", "node", "--help"], ["list", "describe", "approve", "reject", "delete"]),
        (["hive-requester", "--help"], ["run"]),
        (["hive-requester", "run", "--help"], ["--config", "--nats-url", "--auto-approve"]),
        (["hive-nodeagent", "--help"], ["run", "register"]),
    ],
)
def test_help(argv: list[str], expect: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(BIN), "COLUMNS": "200", "HOME": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    for word in expect:
        assert word in result.stdout


def test_modules_run_as_programs() -> None:
    for module in ("requester", "nodeagent", "hivectl.cli.main"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, (module, result.stderr)


def test_hivectl_version() -> None:
    result = subprocess.run([str(BIN / "hivectl"), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("hivectl ")
