"""README.md's "Several requesters on a NATS cluster", run as written, on one machine.

Each sh block of the section is what one kind of machine runs, and `sh` runs it as a
person pasting it would, in a directory standing for that machine: the credentials
(once, the operator's machine), a NATS server (three times), a requester (twice), an
agent (twice), the operator's hivectl lines (one by one, each checked by what it
prints) and the leader check (on each requester). The files the prose says to copy are
copied there, and the daemons run as real processes. Then what the section says about
failures: the leading requester is killed -9 and the other leads within 10 s, and the
README's submit still prints its output after that and after the NATS server leading the
jobs bucket is killed -9 too.

One host standing for six machines needs what no deployment does, and every such change
is made in `OneMachine`: the hosts nats-1..3 are 127.0.0.1, on ports of their own
instead of 4222 and 6222 (and 9464 for the requesters' metrics), and each server keeps
its JetStream data in its own directory. The per-machine edits are the ones the README
asks for (`--name nats-2`, `--name req-2`, `node-2`). The rest is isolation through the
environment, not edits: a HOME per machine, an empty HIVE_CONFIG for the daemons (as root
they would read /etc/hive), STATE_DIRECTORY per daemon (else /var/lib/hive-*), and
DOCKER_HOST for the test's private Docker engine, which has busybox as `busybox`.
Each daemon's output is left in its machine's directory (`<name>.log`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivectl.core.bus import connect_daemon
from hivectl.core.config import NatsSettings
from hivectl.core.credentials import read_credentials_file
from hivectl.core.subjects import Subjects
from tests.e2e.conftest import poll
from tests.support import readme
from tests.support.dockerd import PrivateDockerd
from tests.support.natscluster import jetstream_works, quiet_ports
from tests.support.terminal import Terminal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
SECTION = "Several requesters on a NATS cluster"
CONF = Path(__file__).resolve().parents[2] / "configs" / "nats-cluster.conf"
BIN = Path(sys.executable).parent
SERVERS, REQUESTERS, AGENTS = 3, 2, 2
TAKEOVER_LIMIT = 10.0
S = Subjects()
# Which block is whose: the program each one runs.
ROLES = {
    "credentials": "openssl",
    "server": "nats-server",
    "requester": "hive-requester",
    "agent": "hive-nodeagent",
    "operator": "hivectl",
    "leader": "curl",
}


def replace_all(text: str, changes: dict[str, str]) -> str:
    """`text` with every change made; each must apply, or the README changed under us."""
    for old, new in changes.items():
        assert old in text, f"{old!r} is no longer in {text!r}"
        text = text.replace(old, new)
    return text


class OneMachine:
    """What makes one host stand for three NATS servers and two requesters."""

    def __init__(self, base: Path) -> None:
        ports = quiet_ports(2 * SERVERS + REQUESTERS)
        self.client, self.route = ports[:SERVERS], ports[SERVERS : 2 * SERVERS]
        self.metrics = ports[2 * SERVERS :]
        self.base = base

    def hosts(self, text: str) -> str:
        """The servers' addresses in a command: nats-K:4222 is 127.0.0.1 on a free port."""
        for k, port in enumerate(self.client, 1):
            text = text.replace(f"nats://nats-{k}:4222", f"nats://127.0.0.1:{port}")
        return text

    def conf(self, k: int) -> str:
        """configs/nats-cluster.conf as server `k` runs it here: ports and store dir."""
        changes = {
            "listen: 0.0.0.0:4222": f"listen: 127.0.0.1:{self.client[k - 1]}",
            "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{self.route[k - 1]}",
            "/var/lib/nats/jetstream": str(self.base / f"nats-{k}" / "jetstream"),
        }
        for j, port in enumerate(self.route, 1):
            changes[f"nats-route://nats-{j}:6222"] = f"nats-route://127.0.0.1:{port}"
        return replace_all(CONF.read_text(), changes)

    def metrics_port(self, text: str, k: int) -> str:
        return replace_all(text, {"9464": str(self.metrics[k - 1])})


class Deployment:
    """The machines as directories, the daemons as processes, the blocks by role."""

    def __init__(self, base: Path, docker: PrivateDockerd) -> None:
        self.base, self.here = base, OneMachine(base)
        self.blocks = by_role(readme.blocks(SECTION))
        self.daemons: dict[str, Terminal] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "DOCKER_"))}
        env.pop("STATE_DIRECTORY", None)
        self.env = env | {"PATH": f"{BIN}:{env.get('PATH', '')}"}  # Hive as installed
        (base / "empty.toml").write_text("")
        self.daemon_env = {"HIVE_CONFIG": str(base / "empty.toml"), "DOCKER_HOST": docker.base_url}
        self.admin = self.machine("admin")
        self.credentials = self.admin / "hive-credentials"

    def machine(self, name: str) -> Path:
        home = self.base / name
        home.mkdir(exist_ok=True)
        return home

    def env_of(self, home: Path) -> dict[str, str]:
        return self.env | {"HOME": str(home)}

    def script(self, role: str, changes: dict[str, str] | None = None) -> str:
        return self.here.hosts(replace_all(self.blocks[role], changes or {}))

    def spawn(self, name: str, script: str, *copied: str) -> Terminal:
        """A daemon's block on machine `name`, with the files the README says to copy."""
        home = self.machine(name)
        for file in copied:
            shutil.copy2(self.credentials / file, home / file)
        env = self.env_of(home) | self.daemon_env | {"STATE_DIRECTORY": str(home / "state")}
        self.daemons[name] = Terminal(script, home, env)
        return self.daemons[name]

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        """A block or line to its end, as typed on the operator's machine."""
        return subprocess.run(
            ["sh", "-e", "-c", script], cwd=self.admin, env=self.env_of(self.admin),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def nats(self, role: str = "requester") -> NatsSettings:
        """How a program of `role` reaches the three servers here."""
        url = ",".join(f"nats://127.0.0.1:{port}" for port in self.here.client)
        return NatsSettings(url=url, credentials_file=self.credentials / f"{role}.toml")

    def stop(self) -> None:
        """Kill what runs; each daemon's output stays in its machine's dir (`<name>.log`)."""
        for name, terminal in reversed(self.daemons.items()):  # the servers last
            terminal.kill()
            (self.base / name / f"{name}.log").write_text(terminal.output)


def by_role(blocks: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for block in blocks:
        words = set(re.findall(r"[\w.-]+", block))
        roles = [role for role, program in ROLES.items() if program in words]
        assert len(roles) == 1, f"whose block is this? {block}"
        assert roles[0] not in found, f"two {roles[0]} blocks"
        found[roles[0]] = block
    assert found.keys() == ROLES.keys(), f"the section lacks {ROLES.keys() - found.keys()}"
    return found


@pytest.fixture
def deployment(
    tmp_path: Path, docker_engine: PrivateDockerd, busybox_image: str
) -> Iterator[Deployment]:
    # Like a machine that pulled busybox: `hivectl job submit busybox` runs it here.
    docker_engine.client().images.get(busybox_image).tag("busybox", "latest")
    made = Deployment(tmp_path, docker_engine)
    try:
        yield made
    finally:
        made.stop()


class Walkthrough:
    """The section's blocks in the order an operator follows them, and what they see."""

    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        self.submit = ""  # the README's submit line, to run again after a crash
        self.listing = ""  # and its node list line

    def credentials(self) -> None:
        done = self.d.run(self.d.blocks["credentials"])
        assert done.returncode == 0, done.stderr
        made = {p.name: p for p in self.d.credentials.iterdir()}
        assert sorted(made) == ["compute.toml", "nats.env", "operator.toml", "requester.toml",
                                "user.toml"]  # fmt: skip
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in made.values())
        env = dict(line.split("=", 1) for line in made["nats.env"].read_text().splitlines())
        for role in ("requester", "operator", "compute", "user"):
            user, password = read_credentials_file(made[f"{role}.toml"])
            assert user == role and password  # what the servers admit, below
            assert env[f"{role.upper()}_PASSWORD"] == password

    def servers(self) -> None:
        for k in range(1, SERVERS + 1):
            home = self.d.machine(f"nats-{k}")
            # "Copy ... configs/nats-cluster.conf to each NATS server", as it runs here.
            (home / "nats-cluster.conf").write_text(self.d.here.conf(k))
            script = self.d.script("server", {"--name nats-1": f"--name nats-{k}"})
            self.d.spawn(f"nats-{k}", script, "nats.env")
        asyncio.run(self._jetstream_ready())

    async def _jetstream_ready(self) -> None:
        """Each server takes the requester's password and works as one of three."""
        creds = self.d.credentials / "requester.toml"
        async with asyncio.timeout(30):
            for port in self.d.here.client:
                url = f"nats://127.0.0.1:{port}"
                await jetstream_works(NatsSettings(url=url, credentials_file=creds), SERVERS)

    def requesters(self) -> None:
        for k in range(1, REQUESTERS + 1):
            script = self.d.script("requester", {"--name req-1": f"--name req-{k}"})
            self.d.spawn(f"req-{k}", self.d.here.metrics_port(script, k), "requester.toml")

    def agents(self) -> None:
        for k in range(1, AGENTS + 1):
            script = self.d.script("agent", {"--name node-1": f"--name node-{k}"})
            self.d.spawn(f"node-{k}", script, "compute.toml")

    def operator(self) -> None:
        for line in readme.lines(self.d.blocks["operator"]):
            words = line.split()
            assert words[0] == "hivectl", line
            handlers = {
                ("config", "set"): self.config_set,
                ("node", "list"): self.node_list,
                ("node", "approve"): self.approve,
                ("job", "submit"): self.job_submit,
            }
            handler = handlers.get((words[1], words[2]))
            assert handler is not None, f"the README runs {line!r}, which this test does not know"
            handler(self.d.here.hosts(line))

    def config_set(self, line: str) -> None:
        done = self.d.run(line)
        assert done.returncode == 0, done.stderr

    def node_list(
        self, line: str, approval: str = "PENDING", alive: set[str] | None = None
    ) -> None:
        """Every requester alive listed HEALTHY, and every agent HEALTHY with `approval`."""
        alive = alive or {f"req-{k}" for k in range(1, REQUESTERS + 1)}
        self.listing = line
        said = [""]

        def as_expected() -> bool:
            done = self.d.run(line)
            said[0] = done.stdout + done.stderr
            rows = {row.split()[0]: row.split() for row in done.stdout.splitlines()[1:]}
            agents = [rows.get(f"node-{k}", [])[1:3] for k in range(1, AGENTS + 1)]
            # Every requester is listed, whichever one answered.
            listed = all(rows.get(name, [])[1:3] == ["APPROVED", "HEALTHY"] for name in alive)
            return listed and all(a == [approval, "HEALTHY"] for a in agents)

        try:
            poll(as_expected, timeout=60, what=f"{approval} HEALTHY agents")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the node list said:\n{said[0]}") from None

    def approve(self, line: str) -> None:
        for k in range(1, AGENTS + 1):  # "and node-2"
            done = self.d.run(replace_all(line, {"node-1": f"node-{k}"}))
            assert done.returncode == 0, done.stderr
        self.node_list(self.listing, approval="APPROVED")

    def job_submit(self, line: str) -> None:
        self.submit = line
        done = self.d.run(line)
        assert (done.returncode, done.stdout) == (0, "hello\n"), done.stderr

    def leaders(self) -> dict[str, str]:
        """What the README's leader check prints on each running requester."""
        check = readme.lines(self.d.blocks["leader"])
        assert len(check) == 1, check
        said = {}
        for k in range(1, REQUESTERS + 1):
            name = f"req-{k}"
            if self.d.daemons[name].proc.poll() is None:
                said[name] = self.d.run(self.d.here.metrics_port(check[0], k)).stdout.strip()
        return said

    def leader(self, timeout: float = TAKEOVER_LIMIT) -> str:
        """The one requester whose check says it leads, once the others say they do not."""

        def one() -> str:
            said = self.leaders()
            leading = [name for name, line in said.items() if line == "hive_leader 1.0"]
            others = [line for name, line in said.items() if name not in leading]
            return leading[0] if len(leading) == 1 and set(others) <= {"hive_leader 0.0"} else ""

        return str(poll(one, timeout=timeout, what="one leading requester"))


async def jobs_stream(settings: NatsSettings) -> tuple[str, int]:
    """The server leading the jobs bucket's stream, and how many copies it keeps."""
    nc = await connect_daemon(settings, "test-admin")
    try:
        info = await nc.jetstream(timeout=5).stream_info(S.kv_stream(S.jobs_bucket))
    finally:
        await nc.close()
    assert info.cluster is not None, "the jobs bucket is not clustered"
    return str(info.cluster.leader), int(info.config.num_replicas or 1)


def test_several_requesters_as_the_readme_says(deployment: Deployment) -> None:
    walk = Walkthrough(deployment)
    walk.credentials()
    walk.servers()
    walk.requesters()
    walk.agents()
    walk.operator()
    assert walk.submit, "the README never submits a job"
    first = walk.leader(timeout=30)
    deployment.daemons[first].wait_for(f"requester {first} leads", 5)

    # A requester dies: another leads within TAKEOVER_LIMIT, and hivectl works on.
    deployment.daemons[first].kill()  # kill -9: no hand-over
    killed = time.monotonic()
    second = walk.leader()
    took = time.monotonic() - killed
    deployment.daemons[second].wait_for(f"requester {second} took the lead", 5)
    assert f"from {first}, silent for" in deployment.daemons[second].output
    walk.job_submit(walk.submit)  # the same line, served by the one that is left
    walk.node_list(walk.listing, approval="APPROVED", alive={second})

    # Then a NATS server: the one leading the jobs, which it keeps three copies of.
    server, copies = asyncio.run(jobs_stream(deployment.nats()))
    assert copies == SERVERS and server in deployment.daemons, (server, copies)
    deployment.daemons[server].kill()
    killed = time.monotonic()
    walk.job_submit(walk.submit)
    waited = time.monotonic() - killed
    print(f"\n{first} killed -9: {second} led after {took:.1f}s; {server} killed -9: "
          f"the next submit took {waited:.1f}s")  # fmt: skip
