"""README.md's "Running the daemons" block, run as written, each command as a process.

The commands are read out of README.md, so the README cannot drift from what works.
Only what cannot work on a test machine is replaced, every replacement is listed in
SUBSTITUTIONS, and the rest is isolation through the environment, not edits to the
commands: an own HOME, an empty HIVE_CONFIG (as root the daemons would read
/etc/hive/*.toml), STATE_DIRECTORY per daemon (as root they would use
/var/lib/hive-requester and /var/lib/hive-nodeagent), HIVE_EMBEDDED__PORT (see below),
and the compute machine's working directory, where compute.toml is copied as the
block's comment says. Each command is checked by what its user would see.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hivectl.core.embedded import EmbeddedNats
from tests.e2e.conftest import free_port, poll

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    """The commands of the first sh block under "## Running the daemons", comments cut."""
    section = README.read_text().split("\n## Running the daemons\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [command for command in commands if command]


def substitutions(embedded_port: int, external_port: int) -> dict[str, str]:
    """Every text replaced in the README's commands, and why."""
    return {
        # No machine here is called requester-host, and port 4222 may be taken on a
        # shared test machine: the embedded server listens on a free port instead
        # (HIVE_EMBEDDED__PORT) and the agent connects to that one.
        "requester-host:4222": f"127.0.0.1:{embedded_port}",
        # No external NATS lives at 10.0.0.5: a nats-server this test starts does.
        "10.0.0.5:4222": f"127.0.0.1:{external_port}",
    }


def json_log(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


class Machines:
    """The control machine and one compute machine, as directories and processes."""

    def __init__(self, base: Path, embedded_port: int, external_port: int) -> None:
        self.base = base
        self.subs = substitutions(embedded_port, external_port)
        self.compute_dir = base / "compute-machine"  # the agent commands' working directory
        self.compute_dir.mkdir()
        (base / "home").mkdir()
        (base / "empty.toml").write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "DOCKER_"))}
        env.pop("STATE_DIRECTORY", None)
        env |= {"HOME": str(base / "home"), "HIVE_CONFIG": str(base / "empty.toml")}
        env["PATH"] = f"{BIN}:{env.get('PATH', '')}"  # the programs as installed
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.nats_url = f"nats://127.0.0.1:{embedded_port}"
        self.embedded_port = embedded_port
        self.credentials: Path | None = None  # where the requester said it wrote them

    def argv(self, command: str) -> list[str]:
        for text, stand_in in self.subs.items():
            command = command.replace(text, stand_in)
        return shlex.split(command)

    def state(self, name: str) -> dict[str, str]:
        return {"STATE_DIRECTORY": str(self.base / f"{name}-state")}

    def spawn(self, name: str, command: str, cwd: Path, extra: dict[str, str]) -> Path:
        log = self.base / f"{name}.log"
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                self.argv(command), cwd=cwd, env=self.env | extra,
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        return log

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """A command on the compute machine, to its end."""
        return subprocess.run(
            self.argv(command), cwd=self.compute_dir, env=self.env | self.state("agent"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def hivectl(self, *args: str) -> str:
        """hivectl as the operator runs it, with operator.toml from the requester."""
        assert self.credentials is not None
        operator = {
            "HIVE_NATS__URL": self.nats_url,
            "HIVE_NATS__CREDENTIALS_FILE": str(self.credentials / "operator.toml"),
        }
        done = subprocess.run(
            ["hivectl", *args], env=self.env | operator, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"hivectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def stop(self, name: str, within: float = 10.0) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(within) == 0, (self.base / f"{name}.log").read_text()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[Machines]:
    external = EmbeddedNats(tmp_path / "external-nats", port=0).start()
    made = Machines(tmp_path, free_port(), external.port)
    try:
        yield made
    finally:
        made.kill_all()
        external.stop()


class Walkthrough:
    """What an operator does with each command of the block, and what they see."""

    def __init__(self, machines: Machines) -> None:
        self.m = machines
        self.node_id = ""
        self.fingerprint = ""
        self.public_key = ""

    def handler(self, argv: list[str]) -> Callable[[str], None]:
        handlers: dict[tuple[str, ...], Callable[[str], None]] = {
            ("hive-requester", "run"): self.requester,
            ("hive-requester", "run", "external"): self.external_requester,
            ("hive-nodeagent", "run"): self.agent,
            ("hive-nodeagent", "id"): self.agent_id,
            ("hive-nodeagent", "register"): self.register,
        }
        key = tuple(argv[:2])
        if argv[0] == "hive-requester" and "--nats-url" in argv:
            key += ("external",)
        assert key in handlers, f"the README runs {argv}, which this test does not know"
        return handlers[key]

    def requester(self, command: str) -> None:
        port = {"HIVE_EMBEDDED__PORT": str(self.m.embedded_port)}
        log = self.m.spawn("requester", command, self.m.base, self.m.state("requester") | port)
        said = poll(
            lambda: [e for e in json_log(log) if "credentials_dir" in e], what="credentials"
        )
        creds = Path(said[0]["credentials_dir"])
        assert said[0]["msg"].startswith(f"wrote NATS credentials for each role to {creds}: ")
        assert creds == self.m.base / "requester-state" / "credentials"  # $STATE_DIRECTORY
        self.m.credentials = creds
        # "with compute.toml copied from the requester's credentials dir"
        shutil.copy(creds / "compute.toml", self.m.compute_dir / "compute.toml")
        poll(lambda: "requester" in self.m.hivectl("node", "list"), what="the requester")

    def external_requester(self, command: str) -> None:
        log = self.m.spawn("external", command, self.m.base, self.m.state("external"))
        serving = f"serving on {self.m.subs['10.0.0.5:4222'].join(['nats://', ''])}"
        poll(lambda: any(serving in e["msg"] for e in json_log(log)), what=serving)
        self.m.stop("external")

    def agent(self, command: str) -> None:
        log = self.m.spawn("agent", command, self.m.compute_dir, self.m.state("agent"))
        registered = re.compile(
            r"node (\S+) registered \(approval PENDING, key fingerprint (\S+)\)"
        )
        found = poll(
            lambda: [m for e in json_log(log) if (m := registered.search(e["msg"]))],
            what="the agent to register",
        )
        self.node_id, self.fingerprint = found[0][1], found[0][2]
        row = poll(lambda: self.listed(self.node_id), what=f"{self.node_id} in node list")
        assert "PENDING" in row and "zone=eu-1" in row

    def listed(self, node_id: str) -> str:
        rows = self.m.hivectl("node", "list").splitlines()
        return next((row for row in rows if row.split()[:1] == [node_id]), "")

    def described(self) -> dict[str, str]:
        lines = self.m.hivectl("node", "describe", self.node_id).splitlines()
        return dict(line.split(":", 1) for line in lines if line[:1].isalpha() and ":" in line)

    def agent_id(self, command: str) -> None:
        done = self.m.run(command)
        assert done.returncode == 0, done.stderr
        shown = dict(line.split(":", 1) for line in done.stdout.splitlines())
        assert shown["ID"].strip() == self.node_id
        assert shown["Fingerprint"].strip() == self.fingerprint  # as the agent logged it
        described = self.described()
        assert described["Fingerprint"].strip() == self.fingerprint  # as node describe says
        self.public_key = described["Public key"].strip()
        assert shown["Public key"].strip() == self.public_key

    def register(self, command: str) -> None:
        # "come back after an operator's delete"
        self.m.hivectl("node", "delete", self.node_id)
        poll(lambda: not self.listed(self.node_id), what=f"{self.node_id} to be deleted")
        done = self.m.run(command)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"registered {self.node_id}: PENDING\n"
        row = self.listed(self.node_id)
        assert "PENDING" in row and "zone=eu-1" in row  # with the labels `run` was given
        described = self.described()  # the same node: same id, same key
        assert described["Public key"].strip() == self.public_key
        assert described["Fingerprint"].strip() == self.fingerprint


def test_running_the_daemons_works_as_the_readme_says(machines: Machines) -> None:
    commands = readme_commands()
    assert len(commands) >= 5, commands
    walk = Walkthrough(machines)
    for command in commands:
        walk.handler(machines.argv(command))(command)
    assert walk.public_key, "the README never showed the node's fingerprint"
    # Both stop on SIGTERM, the agent first as an operator would.
    machines.stop("agent")
    machines.stop("requester")
