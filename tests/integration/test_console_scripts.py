"""The installed console scripts start and explain themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hivectl import __version__

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["hivectl", "--help"], ["node", "devstack", "--nats-url"]),
        (["hivectl", "node", "--help"], ["list", "describe", "approve", "reject", "delete"]),
        (["hive-requester", "--help"], ["run"]),
        (["hive-requester", "run", "--help"], ["--config", "--nats-url", "--auto-approve"]),
        (["hive-nodeagent", "--help"], ["run", "register", "id"]),
        # -h is --help's short form on both daemons and every subcommand.
        (["hive-requester", "-h"], ["run", "--version"]),
        (["hive-requester", "run", "-h"], ["--credentials", "--host", "--data-dir"]),
        (["hive-nodeagent", "-h"], ["run", "register", "id", "--version"]),
        (["hive-nodeagent", "run", "-h"], ["--nats-url", "--credentials", "--label"]),
        (["hive-nodeagent", "register", "-h"], ["--credentials", "--state-dir"]),
        (["hive-nodeagent", "id", "-h"], ["fingerprint", "--state-dir"]),
    ],
)
def test_help(argv: list[str], expect: list[str]) -> None:
    result = script(*argv)
    assert result.returncode == 0, result.stderr
    for word in expect:
        assert word in result.stdout


def script(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(BIN), "COLUMNS": "200", "HOME": "/nonexistent", **(env or {})},
    )


@pytest.mark.parametrize("program", ["hive-requester", "hive-nodeagent"])
def test_daemon_version(program: str) -> None:
    result = script(program, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{program} {__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["hive-requester", "run", "--no-such-flag"],
        ["hive-requester", "launch"],
        ["hive-nodeagent", "run", "--no-such-flag"],
        ["hive-nodeagent", "run", "--label", "no-equals-sign"],
    ],
    ids=["requester-flag", "requester-command", "agent-flag", "agent-label"],
)
def test_a_bad_command_line_exits_2(argv: list[str]) -> None:
    result = script(*argv)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("program", ["hive-requester", "hive-nodeagent"])
def test_a_bad_config_exits_2_with_one_line(program: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("heartbeat_interval = 'soon'\nunhealthy_after = 'soon'\n")
    result = script(program, "run", "--config", str(bad))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{program}: invalid configuration ({bad}")


@pytest.mark.parametrize(
    ("program", "where"), [("hive-requester", "--data-dir"), ("hive-nodeagent", "--state-dir")]
)
def test_a_runtime_failure_exits_1_saying_why(program: str, where: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    (tmp_path / "empty.toml").write_text("")
    result = script(
        program, "run", where, str(blocker / "state"), "--nats-url", "nats://127.0.0.1:1",
        env={"HIVE_CONFIG": str(tmp_path / "empty.toml")},
    )  # fmt: skip
    assert result.returncode == 1
    failed = [json.loads(line) for line in result.stderr.splitlines() if '"error"' in line]
    assert [entry["msg"].split(" failed: ")[1] for entry in failed] == [
        f"[Errno 20] Not a directory: '{blocker / 'state'}'"
    ]


def test_modules_run_as_programs() -> None:
    for module in ("requester", "nodeagent", "hivectl.cli.main"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, (module, result.stderr)


def test_hivectl_version() -> None:
    result = subprocess.run([str(BIN / "hivectl"), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("hivectl ")
