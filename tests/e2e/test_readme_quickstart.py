"""The README's Quickstart, run word for word from a fresh checkout with its own HOME.

`make devstack` creates the venv, installs Hive and brings up a cluster; "another shell"
(the same HOME) runs the README's `hivectl` example against it; Ctrl-C, sent to the
foreground process group as a terminal does, leaves no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import readme
from tests.support.terminal import Terminal, processes_under

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
INSTALL_AND_START = 480.0  # a fresh venv and a pip install come first


def fresh_user_env(home: Path) -> dict[str, str]:
    """This environment as a new user's shell has it: own HOME, no Hive settings.

    pip keeps the real user's download cache (PIP_CACHE_DIR) so CI does not fetch the
    same wheels twice; what gets installed is still decided by the checkout alone.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HIVE_", "XDG_", "VIRTUAL_ENV", "PYTEST", "COLUMNS"))
    }
    cache = Path.home() / ".cache" / "pip"
    if cache.is_dir() and "PIP_CACHE_DIR" not in env:
        env["PIP_CACHE_DIR"] = str(cache)
    return env | {"HOME": str(home)}


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    repo = readme.checkout(tmp_path / "hive")
    yield repo
    leftover = processes_under(repo, tmp_path)
    for proc in leftover:
        proc.kill()


def test_quickstart_as_written(checkout: Path, tmp_path: Path) -> None:
    block = readme.commands("Quickstart")
    assert block == ["make devstack", "make test"], block  # `make test` is this very suite
    example = readme.inline_commands("Quickstart", ".venv/bin/hivectl")
    assert example, "the Quickstart shows no hivectl command to try"
    home = tmp_path / "home"
    home.mkdir()
    env = fresh_user_env(home)

    stack = Terminal(block[0], checkout, env)
    try:
        stack.wait_for("Press Ctrl-C", INSTALL_AND_START)
        # The node list devstack printed: the requester and three HEALTHY agents.
        rows = [line.split() for line in stack.output.splitlines()]
        listed = [row for row in rows if row and row[0].startswith("node-")]
        assert sorted(row[0] for row in listed) == ["node-1", "node-2", "node-3"]
        assert all(row[1:3] == ["APPROVED", "HEALTHY"] for row in listed), stack.output
        stack_dir = Path(stack.output.split("State and logs: ")[1].split()[0])

        # Another shell, same HOME: no flags, no exports.
        nodes = shell(".venv/bin/hivectl node list -o json", checkout, env)
        health = {n["node_id"]: n["health"] for n in json.loads(nodes.stdout)}
        assert health == dict.fromkeys(["requester", "node-1", "node-2", "node-3"], "HEALTHY")
        outputs = [shell(command, checkout, env).stdout for command in example]
        assert outputs == ["hello\n"], outputs  # `... -- echo hello` waits and prints it

        stack.ctrl_c()
        stack.proc.wait(60)
        assert "devstack stopped" in stack.output
        gone = psutil.wait_procs(processes_under(checkout, stack_dir), timeout=10)[1]
        assert not gone, [p.info["cmdline"] for p in gone]
        assert not stack_dir.exists()  # a clean run leaves nothing
        assert not (home / ".config" / "hive" / "hivectl.toml").exists()
    finally:
        stack.kill()


def shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    ran = subprocess.run(
        command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, f"{command} failed:\n{ran.stderr}"
    return ran
