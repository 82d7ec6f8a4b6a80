"""`hivectl devstack`: a throw-away local cluster of real processes.

Embedded NATS runs in this process; the requester and each node agent are child
processes with fast health intervals, logging to files in the stack's directory.
Ctrl-C stops the agents, then the requester, then NATS, and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from hivectl.cli.common import APP_SETTINGS, info
from hivectl.cli.output import counted
from hivectl.core.api import NodeListReply, NodeListRequest
from hivectl.core.bus import BusError, RemoteError, connect_cli, request
from hivectl.core.config import ClientConfig, NatsSettings
from hivectl.core.credentials import authorization_block, ensure_credentials
from hivectl.core.embedded import EmbeddedNats, EmbeddedNatsError, die_with_parent, on_main_thread
from hivectl.core.models import Health, NodeType
from hivectl.core.subjects import Subjects

app = typer.Typer(invoke_without_command=True, **APP_SETTINGS)
CONTEXT_MARK = "# written by `hivectl devstack`; removed when it stops\n"
STOP_GRACE = 10.0

# Fast intervals so a dev cluster shows health changes in seconds, not minutes.
REQUESTER_ENV = {"HIVE_UNHEALTHY_AFTER": "5s", "HIVE_DISCONNECTED_AFTER": "10s"}
AGENT_ENV = {
    "HIVE_HEARTBEAT_INTERVAL": "1s",
    "HIVE_RESOURCE_UPDATE_INTERVAL": "2s",
    "HIVE_INFO_UPDATE_INTERVAL": "10s",
}


class Executor(StrEnum):
    PROCESS = "process"
    DOCKER = "docker"


class Child:
    """One daemon process of the stack, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches devstack alone; it stops them in order
                preexec_fn=die_with_parent if on_main_thread() else None,
            )

    def exited(self) -> int | None:
        return self.proc.poll()

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class DevStack:
    def __init__(self, base: Path, computes: int, executor: Executor, auto_approve: bool) -> None:
        self.base = base
        self.computes = computes
        self.executor = executor
        self.auto_approve = auto_approve
        self.nats: EmbeddedNats | None = None
        self.children: list[Child] = []
        # One credential per role, as a production requester's embedded server has them.
        self.creds = ensure_credentials(base / "credentials")

    @property
    def operator(self) -> Path:
        return self.creds["operator"].path

    def start(self, port: int) -> str:
        auth = authorization_block(self.creds, Subjects())
        self.nats = EmbeddedNats(self.base / "nats", port=port, extra_config=auth).start()
        empty = self.base / "empty.toml"  # keeps a user's /etc/hive files out of the stack
        empty.write_text("")
        env = {**_clean_env(), "HIVE_CONFIG": str(empty)}
        requester_env = {"HIVE_NATS__CREDENTIALS_FILE": str(self.creds["requester"].path)}
        approve = "--auto-approve" if self.auto_approve else "--no-auto-approve"
        self._spawn(
            "requester",
            [
                "requester",
                "run",
                "--nats-url",
                self.nats.url,
                "--data-dir",
                str(self.base / "requester"),
                approve,
            ],
            env | REQUESTER_ENV | requester_env,
        )
        agent_env = (
            env
            | AGENT_ENV
            | {
                "HIVE_NATS__CREDENTIALS_FILE": str(self.creds["compute"].path),
                "HIVE_EXECUTORS__PROCESS__ENABLED": str(self.executor is Executor.PROCESS).lower(),
                "HIVE_EXECUTORS__DOCKER__ENABLED": str(self.executor is Executor.DOCKER).lower(),
            }
        )
        for i in range(1, self.computes + 1):
            name = f"node-{i}"
            self._spawn(
                name,
                [
                    "nodeagent",
                    "run",
                    "--nats-url",
                    self.nats.url,
                    "--name",
                    name,
                    "--state-dir",
                    str(self.base / name),
                ],
                agent_env,
            )
        return self.nats.url

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", *args]
        self.children.append(Child(name, argv, env, self.base / f"{name}.log"))

    def dead_child(self) -> Child | None:
        return next((c for c in self.children if c.exited() is not None), None)

    async def wait_ready(self, url: str, timeout: float) -> None:
        """Until every agent is HEALTHY in the requester's list (and APPROVED if auto)."""
        deadline = time.monotonic() + timeout
        while True:
            if (dead := self.dead_child()) is not None:
                raise RuntimeError(f"{dead.name} exited ({dead.exited()}):\n{dead.tail()}")
            if await self._ready(url):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stack was not ready after {timeout:g}s; logs: {self.base}")
            await asyncio.sleep(0.2)

    async def _ready(self, url: str) -> bool:
        try:
            nc = await connect_cli(NatsSettings(url=url, credentials_file=self.operator))
        except BusError:
            return False
        try:
            reply = await request(
                nc, Subjects().api("node", "list"), NodeListRequest(), NodeListReply, timeout=2
            )
        except (BusError, RemoteError):
            return False
        finally:
            await nc.close()
        nodes = [n for n in reply.nodes if n.type is NodeType.COMPUTE]
        up = [n for n in nodes if n.health is Health.HEALTHY]
        return len(up) == self.computes and (
            not self.auto_approve or all(n.approval == "APPROVED" for n in up)
        )

    def stop(self) -> None:
        """Agents first (they announce they leave), then the requester, then NATS."""
        for group in (self.children[1:], self.children[:1]):
            for child in group:
                if child.exited() is None:
                    child.proc.send_signal(signal.SIGTERM)
            for child in group:
                try:
                    child.proc.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        if self.nats is not None:
            self.nats.stop()


def _clean_env() -> dict[str, str]:
    """This process's environment without HIVE_* settings that would leak into the stack."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}


def write_context(url: str, credentials: Path) -> Path | None:
    """Point `hivectl` in other shells at the stack, unless the user has a config file."""
    path = ClientConfig.usual_file()
    if path.exists() and not path.read_text().startswith(CONTEXT_MARK):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    nats = f'[nats]\nurl = "{url}"\ncredentials_file = "{credentials}"\n'
    path.write_text(CONTEXT_MARK + nats)
    return path


def remove_context(path: Path | None) -> None:
    if path is not None and path.exists() and path.read_text().startswith(CONTEXT_MARK):
        path.unlink()


@app.callback()
def devstack(
    computes: Annotated[
        int, typer.Option("--computes", "-n", min=0, max=64, help="How many node agents to start.")
    ] = 3,
    executor: Annotated[
        Executor,
        typer.Option(
            case_sensitive=False, help="The executor the agents enable: process or docker."
        ),
    ] = Executor.PROCESS,
    port: Annotated[int, typer.Option(help="NATS client port (0: any free port).")] = 0,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Keep state and logs here (default: a temp dir, removed at exit)."
        ),
    ] = None,
    auto_approve: Annotated[
        bool,
        typer.Option(
            "--auto-approve/--no-auto-approve", help="Approve the agents as they register."
        ),
    ] = True,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the stack.")] = 60.0,
) -> None:
    """Start a local cluster: embedded NATS, a requester and N node agents, as processes.

    It waits until every agent is HEALTHY, prints `hivectl node list`, and runs until
    Ctrl-C, which stops every process it started. `hivectl` in another shell talks to it
    through ~/.config/hive/hivectl.toml, which devstack writes when you have none (and
    removes at exit); otherwise use the `export HIVE_NATS__URL=...` line it prints.
    """
    base = directory or Path(tempfile.mkdtemp(prefix="hive-devstack-"))
    base.mkdir(parents=True, exist_ok=True)
    stack = DevStack(base, computes, executor, auto_approve)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    context = None
    try:
        url = stack.start(port)
        asyncio.run(stack.wait_ready(url, ready_timeout))
        context = write_context(url, stack.operator)
        _announce(stack, url, context)
        _run_until(stop, stack)
    except (EmbeddedNatsError, RuntimeError) as exc:
        info(f"Error: {exc}")
        raise typer.Exit(1) from None
    finally:
        stack.stop()
        remove_context(context)
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)
    info("devstack stopped")


def _announce(stack: DevStack, url: str, context: Path | None) -> None:
    env = {**os.environ, "HIVE_NATS__CREDENTIALS_FILE": str(stack.operator)}
    argv = [sys.executable, "-m", "hivectl.cli.main", "--nats-url", url, "node", "list"]
    subprocess.run(argv, check=False, env=env)
    lines = [
        "",
        f"Hive devstack is up: a requester and {counted(stack.computes, 'node agent')} "
        f"({stack.executor} executor), NATS at {url}.",
        f"hivectl in another shell uses it ({context} points there)."
        if context
        else f"Point hivectl at it:  export HIVE_NATS__URL={url} "
        f"HIVE_NATS__CREDENTIALS_FILE={stack.operator}",
        f"State and logs: {stack.base}",
        "Press Ctrl-C to stop.",
    ]
    typer.echo("\n".join(lines))


def _run_until(stop: threading.Event, stack: DevStack) -> None:
    while not stop.wait(0.5):
        if (dead := stack.dead_child()) is not None:
            raise RuntimeError(f"{dead.name} exited ({dead.exited()}):\n{dead.tail()}")
