"""`hivectl devstack`: a throw-away local cluster of real processes.

Embedded NATS runs as a child of this process; the requester and each node agent are
child processes with fast health intervals, logging to files in the stack's directory.
A child that exits on its own is restarted (see stackprocs); Ctrl-C stops the agents,
then the requester, then NATS, removes containers its jobs left, and leaves nothing
behind. The directory is removed only after a clean run: after any failure it stays,
and devstack says where, so the logs can be read.
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
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from hivectl.cli.common import APP_SETTINGS, info, status_line
from hivectl.cli.output import counted
from hivectl.cli.stackprocs import Child, Supervisor, python_child, remove_left_containers
from hivectl.core.api import NodeListReply, NodeListRequest
from hivectl.core.bus import BusError, RemoteError, connect_cli, request
from hivectl.core.config import ClientConfig, NatsSettings
from hivectl.core.credentials import authorization_block, ensure_credentials
from hivectl.core.embedded import EmbeddedNats, EmbeddedNatsError
from hivectl.core.models import Health, NodeType
from hivectl.core.subjects import Subjects

# A bare `hivectl devstack` (and so `make devstack`) starts the stack: no help page.
app = typer.Typer(invoke_without_command=True, **(APP_SETTINGS | {"no_args_is_help": False}))
CONTEXT_MARK = "# written by `hivectl devstack`; removed when it stops\n"
STOP_GRACE = 15.0  # above the agents' job grace period (10s), so they report their jobs
SUPERVISE_EVERY = 0.5

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


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while the stack was still starting."""


class DevStack:
    def __init__(self, base: Path, computes: int, executor: Executor, auto_approve: bool) -> None:
        self.base = base
        self.computes = computes
        self.executor = executor
        self.auto_approve = auto_approve
        self.nats: EmbeddedNats | None = None
        self.children: list[Child] = []
        self.supervisor = Supervisor(self.children, info)
        self.started = datetime.now(UTC)
        # One credential per role, as a production requester's embedded server has them.
        self.creds = ensure_credentials(base / "credentials")

    @property
    def operator(self) -> Path:
        return self.creds["operator"].path

    @property
    def agents(self) -> list[Child]:
        return self.children[1:]

    def start(self, port: int) -> str:
        auth = authorization_block(self.creds, Subjects())
        self.nats = EmbeddedNats(self.base / "nats", port=port, extra_config=auth).start()
        url = self.nats.url
        info(f"NATS ready at {url}; starting a requester and {self.computes} node agents")
        empty = self.base / "empty.toml"  # keeps a user's /etc/hive files out of the stack
        empty.write_text("")
        env = {**_clean_env(), "HIVE_CONFIG": str(empty)}
        approve = "--auto-approve" if self.auto_approve else "--no-auto-approve"
        requester_args = ["requester", "run", "--nats-url", url, approve]
        requester_args += ["--data-dir", str(self.base / "requester")]
        requester_env = {
            "HIVE_NATS__CREDENTIALS_FILE": str(self.creds["requester"].path),
            # What `hivectl user add` puts in each user's file.
            "HIVE_USER_CREDENTIALS_FILE": str(self.creds["user"].path),
        }
        self._spawn("requester", requester_args, env | REQUESTER_ENV | requester_env)
        agent_env = env | AGENT_ENV | self._agent_settings()
        for i in range(1, self.computes + 1):
            name = f"node-{i}"
            args = ["nodeagent", "run", "--nats-url", url, "--name", name]
            self._spawn(name, [*args, "--state-dir", str(self.base / name)], agent_env)
        return url

    def _agent_settings(self) -> dict[str, str]:
        return {
            "HIVE_NATS__CREDENTIALS_FILE": str(self.creds["compute"].path),
            "HIVE_EXECUTORS__PROCESS__ENABLED": str(self.executor is Executor.PROCESS).lower(),
            "HIVE_EXECUTORS__DOCKER__ENABLED": str(self.executor is Executor.DOCKER).lower(),
        }

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        child = python_child(name, args, env, self.base)
        child.start()
        self.children.append(child)

    def supervise(self) -> None:
        """Restart NATS or any child that exited on its own (one line each)."""
        if self.nats is not None and not self.nats.running:
            self.supervisor.incidents += 1
            info(f"nats-server exited (code {self.nats.exit_code()}); restarting it")
            self.nats.start()  # the same port: the children reconnect by themselves
        self.supervisor.check()

    async def wait_ready(self, url: str, timeout: float, stop: threading.Event) -> None:
        """Until every agent is HEALTHY in the requester's list (and APPROVED if auto)."""
        deadline = time.monotonic() + timeout
        with status_line("Waiting for the node agents to be HEALTHY") as show:
            while (up := await self._healthy(url)) != self.computes:
                if stop.is_set():
                    raise Interrupted
                self.supervise()
                if failed := self.supervisor.given_up():
                    raise RuntimeError(f"{failed[0].name} keeps exiting:\n{failed[0].tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the stack was not ready after {timeout:g}s")
                show(f"Waiting for the node agents: {up} of {self.computes} HEALTHY")
                await asyncio.sleep(0.2)

    async def _healthy(self, url: str) -> int:
        """How many agents the requester lists as HEALTHY (and APPROVED if auto)."""
        try:
            nc = await connect_cli(NatsSettings(url=url, credentials_file=self.operator))
        except BusError:
            return -1
        try:
            reply = await request(
                nc, Subjects().api("node", "list"), NodeListRequest(), NodeListReply, timeout=2
            )
        except (BusError, RemoteError):
            return -1
        finally:
            await nc.close()
        return sum(
            1
            for n in reply.nodes
            if n.type is NodeType.COMPUTE
            and n.health is Health.HEALTHY
            and (not self.auto_approve or n.approval == "APPROVED")
        )

    def stop(self, forced: threading.Event) -> None:
        """Agents first (they announce they leave), then the requester, then NATS.

        A second Ctrl-C (`forced`) cuts the waiting short: what is left is killed.
        """
        for group in (self.agents, self.children[:1]):
            for child in group:
                child.terminate()
            deadline = time.monotonic() + STOP_GRACE
            for child in group:
                while not child.wait(0.1) and time.monotonic() < deadline:
                    if forced.is_set():
                        break
                child.kill()
        if self.nats is not None:
            self.nats.stop(timeout=1.0 if forced.is_set() else 10.0)
        if self.executor is Executor.DOCKER:
            names, host = [c.name for c in self.agents], os.environ.get("DOCKER_HOST")
            removed = remove_left_containers(names, self.started, host, info)
            if removed:
                info(f"Removed {removed} container(s) that jobs left behind")


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
            "--dir",
            help="Keep state and logs here (default: a temp dir, removed after a clean stop).",
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
    Ctrl-C, which stops every process it started (a second Ctrl-C stops them at once).
    A daemon that exits on its own is restarted, and left stopped if it keeps exiting;
    the rest stay up. `hivectl` in another shell talks to the stack through
    ~/.config/hive/hivectl.toml, which devstack writes when you have none (and removes
    at exit); otherwise use the `export HIVE_NATS__URL=...` line it prints. State and
    logs are removed after a clean stop, and kept (devstack says where) after any failure.
    """
    base = directory or Path(tempfile.mkdtemp(prefix="hive-devstack-"))
    base.mkdir(parents=True, exist_ok=True)
    stop, forced = _signals()
    stack = DevStack(base, computes, executor, auto_approve)
    context, code = None, 0
    try:
        url = stack.start(port)
        asyncio.run(stack.wait_ready(url, ready_timeout, stop))
        context = write_context(url, stack.operator)
        _announce(stack, url, context)
        _run_until(stop, stack)
    except Interrupted:
        pass
    except (EmbeddedNatsError, RuntimeError) as exc:
        info(f"Error: {exc}")
        code = 1
    finally:
        stack.stop(forced)
        remove_context(context)
    _leave_directory(base, keep=directory is not None or code != 0 or stack.supervisor.incidents)
    info("devstack stopped")
    raise typer.Exit(code)


def _signals() -> tuple[threading.Event, threading.Event]:
    """SIGINT/SIGTERM set `stop`; a second one sets `forced` too."""
    stop, forced = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            forced.set()
            info("Second interrupt: stopping everything now")
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    return stop, forced


def _leave_directory(base: Path, *, keep: object) -> None:
    """Remove a temp stack's directory after a clean run; otherwise say where it is."""
    if keep:
        info(f"State and logs kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)


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
        "Give someone access: hivectl user add alice --role submitter  (writes "
        "./alice.creds.toml: hand it over; alice runs hivectl with "
        "HIVE_NATS__CREDENTIALS_FILE=alice.creds.toml)",
        f"State and logs: {stack.base}",
        "Press Ctrl-C to stop.",
    ]
    typer.echo("\n".join(lines))


def _run_until(stop: threading.Event, stack: DevStack) -> None:
    while not stop.wait(SUPERVISE_EVERY):
        stack.supervise()
