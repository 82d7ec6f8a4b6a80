"""The installed `hivectl`, as a process: exit statuses and what its errors tell a person.

As `hivectl --help` says: 0 on success, 1 when the cluster says no, cannot be reached
or a job fails, 2 for a bad command line or configuration (refused before connecting).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hivectl.core.embedded import EmbeddedNats
from tests.e2e.conftest import Cluster, poll

pytestmark = pytest.mark.e2e

HIVECTL = str(Path(sys.executable).parent / "hivectl")
NOWHERE = "nats://127.0.0.1:1"  # nothing listens: a command that connected would exit 1


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HIVECTL, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No user config or HIVE_* setting; the usual config file is an empty one."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    (tmp_path / "hivectl.toml").write_text("")
    return clean | {"HIVE_CONFIG": str(tmp_path / "hivectl.toml")}


def one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["node", "list", "-l", "zone in (a"], "invalid selector"),
        (["node", "describe", "Bad.Id"], "invalid node id"),
        (["--timeout", "soon", "node", "list"], "timeout"),
        (["--config", "/nonexistent/hivectl.toml", "node", "list"], "does not exist"),
        (["job", "submit", "--engine", "process"], "a process job needs a command"),
        (["job", "submit", "-e", "NOEQUALS", "busybox"], "is not KEY=VALUE"),
        (["job", "submit", "--cpu", "lots", "busybox"], "is not a CPU amount"),
    ],
)
def test_a_bad_command_line_or_configuration_exits_2(
    env: dict[str, str], args: list[str], says: str
) -> None:
    assert says in one_error_line(run("--nats-url", NOWHERE, *args, env=env), 2)


@pytest.mark.parametrize("args", [["node", "lst"], ["node", "list", "--bogus"], ["job"]])
def test_usage_errors_exit_2(env: dict[str, str], args: list[str]) -> None:
    done = run(*args, env=env)  # a noun alone shows its help, as click does
    assert done.returncode == 2, done.stderr
    assert "Usage" in done.stderr + done.stdout


def test_a_missing_credentials_file_is_configuration(env: dict[str, str]) -> None:
    creds = {"HIVE_NATS__CREDENTIALS_FILE": "/nonexistent/operator.toml"}
    line = one_error_line(run("--nats-url", NOWHERE, "node", "list", env=env | creds), 2)
    assert "/nonexistent/operator.toml" in line and "credentials_file" in line


def test_unreachable_nats_exits_1_saying_where_and_what_to_check(env: dict[str, str]) -> None:
    line = one_error_line(run("--nats-url", NOWHERE, "node", "list", env=env), 1)
    assert line.startswith(f"Error: cannot reach NATS at {NOWHERE} (from --nats-url): ")
    assert "connection refused" in line
    assert "systemctl status hive-requester" in line
    assert "--nats-url" in line and "HIVE_NATS__URL" in line

    from_env = env | {"HIVE_NATS__URL": NOWHERE}
    line = one_error_line(run("job", "list", env=from_env), 1)
    assert f"{NOWHERE} (from HIVE_NATS__URL)" in line


def test_no_requester_exits_1_saying_how_to_check(
    env: dict[str, str], nats_server: EmbeddedNats
) -> None:
    line = one_error_line(run("--nats-url", nats_server.url, "node", "list", env=env), 1)
    assert "no requester is answering" in line
    assert f"{nats_server.url} (from --nats-url)" in line
    assert "hive-requester is running and connected to that NATS" in line
    assert "systemctl status hive-requester" in line and "--nats-url" in line


def test_against_a_cluster_0_on_success_1_when_it_says_no(
    cluster: Cluster, env: dict[str, str]
) -> None:
    cluster.start_requester(auto_approve=True)
    cluster.start_agent("node-1")
    poll(lambda: cluster.states().get("node-1") == ("APPROVED", "HEALTHY"), what="node-1")
    url = ["--nats-url", cluster.url]
    env = env | {"HIVE_NATS__CREDENTIALS_FILE": str(cluster.operator)}
    listed = run(*url, "node", "list", env=env)
    assert listed.returncode == 0 and listed.stdout.startswith("ID "), listed.stderr

    assert "nosuch" in one_error_line(run(*url, "node", "describe", "nosuch", env=env), 1)

    ok = run(*url, "job", "submit", "--engine", "process", "--", "true", env=env)
    assert ok.returncode == 0 and "COMPLETED" in ok.stderr, ok.stderr
    failed = run(*url, "job", "submit", "--engine", "process", "--", "false", env=env)
    assert failed.returncode == 1 and "FAILED" in failed.stderr, failed.stderr
