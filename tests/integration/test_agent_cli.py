"""`hive-nodeagent` as a process: help, config errors, `register`, and `run` until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from hivectl.core.auth import fingerprint
from hivectl.core.config import NatsSettings
from hivectl.core.credentials import authorization_block, ensure_credentials
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.subjects import Subjects
from nodeagent.identity import read_sentinel
from tests.integration.test_agent_membership import FakeRequester, until

AGENT = Path(sys.executable).parent / "hive-nodeagent"


def clean_env() -> dict[str, str]:
    """The test's environment without HIVE_* settings that would leak into the agent."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}


def agent_config(tmp_path: Path, nats: NatsSettings) -> Path:
    path = tmp_path / "nodeagent.toml"
    path.write_text(
        f'name = "node-p"\nstate_dir = "{tmp_path / "state"}"\n'
        "heartbeat_interval = 0.1\nresource_update_interval = 0.2\n"
        'info_update_interval = 0.3\n[nats]\nurl = "' + nats.url + '"\n'
        '[log]\nformat = "console"\n'
    )
    return path


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(AGENT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env() | (env or {}),
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    "command",
    [[str(AGENT), "--help"], [sys.executable, "-m", "nodeagent", "--help"]],
    ids=["script", "module"],
)
def test_help_mentions_both_commands(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout and "register" in done.stdout
    assert "hive-nodeagent" in done.stdout


async def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    code, out, err = await run_cli("run", "--config", str(tmp_path / "nope.toml"))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "does not exist" in err


async def test_bad_label_exits_2(tmp_path: Path, nats_settings: NatsSettings) -> None:
    cfg = agent_config(tmp_path, nats_settings)
    code, _, err = await run_cli("run", "--config", str(cfg), "--label", "no-equals-sign")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "label" in err


async def test_register_prints_approval_and_writes_sentinel(
    tmp_path: Path, nats_settings: NatsSettings, nc: Client
) -> None:
    requester = await FakeRequester(nc).start()
    cfg = agent_config(tmp_path, nats_settings)
    code, out, err = await run_cli("register", "--config", str(cfg), "--label", "zone=b")
    assert code == 0, err
    assert out.strip() == "registered node-p: PENDING"
    [request] = requester.registrations
    assert request.node_id == "node-p" and request.info.labels == {"zone": "b"}
    sentinel = read_sentinel(tmp_path / "state")
    assert sentinel is not None and sentinel.requester_key == requester.identity.public_key


async def test_register_without_requester_exits_1(
    tmp_path: Path, nats_settings: NatsSettings
) -> None:
    cfg = agent_config(tmp_path, nats_settings)
    code, out, err = await run_cli("register", "--config", str(cfg), "--log-level", "error")
    assert code == 1 and out == ""
    assert err.strip() == "hive-nodeagent: no requester is answering on hive.node.register"
    assert read_sentinel(tmp_path / "state") is None


async def test_register_without_nats_exits_1(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, NatsSettings(url="nats://127.0.0.1:1"))
    code, _, err = await run_cli("register", "--config", str(cfg), "--log-level", "error")
    assert code == 1
    assert err.strip().startswith("hive-nodeagent: cannot reach NATS at nats://127.0.0.1:1")


async def test_run_until_sigterm_sends_leave(
    tmp_path: Path, nats_settings: NatsSettings, nc: Client
) -> None:
    requester = await FakeRequester(nc).start()
    cfg = agent_config(tmp_path, nats_settings)
    proc = await asyncio.create_subprocess_exec(
        str(AGENT),
        "run",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    try:
        await until(lambda: len(requester.heartbeats) >= 3, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    await until(lambda: len(requester.leaves) == 1)
    assert requester.bad == []
    assert "node agent node-p stopped after" in err.decode()


async def run_until_registered(
    requester: FakeRequester, *args: str, env: dict[str, str] | None = None
) -> None:
    """`hive-nodeagent run ARGS` until the requester has its registration, then SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        str(AGENT), "run", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=clean_env() | (env or {}),
    )  # fmt: skip
    try:
        await until(lambda: len(requester.registrations) >= 1, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def test_id_prints_the_fingerprint_of_the_key_the_node_registered(
    tmp_path: Path, nats_settings: NatsSettings, nc: Client
) -> None:
    cfg = agent_config(tmp_path, nats_settings)
    code, out, err = await run_cli("id", "--config", str(cfg))
    # Before the first start there is no identity, and `id` makes none.
    assert code == 1 and out == ""
    assert err.startswith(f"hive-nodeagent: no identity in {tmp_path / 'state'} yet: ")
    assert not (tmp_path / "state").exists()

    requester = await FakeRequester(nc).start()
    await run_until_registered(requester, "--config", str(cfg))
    [registration] = requester.registrations
    code, out, err = await run_cli("id", "--config", str(cfg))
    assert code == 0, err
    key = registration.public_key
    assert out.splitlines() == [
        "ID:              node-p",
        f"Fingerprint:     {fingerprint(key)}",  # what `hivectl node describe` shows
        f"Public key:      {key}",
        f"State dir:       {tmp_path / 'state'}",
    ]


async def test_register_uses_the_state_dir_and_flags_of_run(
    tmp_path: Path, nats_settings: NatsSettings, nc: Client
) -> None:
    # STATE_DIRECTORY stands for the default dir both commands find (systemd sets it for
    # the unit; /var/lib/hive-nodeagent is what a root shell gets), and no config file.
    (tmp_path / "empty.toml").write_text("")
    env = {"STATE_DIRECTORY": str(tmp_path / "state"), "HIVE_CONFIG": str(tmp_path / "empty.toml")}
    requester = await FakeRequester(nc).start()
    await run_until_registered(
        requester, "--nats-url", nats_settings.url, "--name", "node-r", "--label", "zone=b",
        env=env,
    )  # fmt: skip
    code, out, err = await run_cli("register", "--log-level", "error", env=env)
    assert code == 0, err
    assert out == "registered node-r: PENDING\n"
    first, again = requester.registrations
    assert again.node_id == first.node_id == "node-r"
    assert again.public_key == first.public_key  # the same identity, not a new one
    assert again.info.labels == {"zone": "b"}
    # A flag given to register still wins over what run was given.
    code, _, err = await run_cli("register", "--label", "zone=c", "--log-level", "error", env=env)
    assert code == 0, err
    assert requester.registrations[-1].info.labels == {"zone": "c"}


async def test_register_without_credentials_says_which_to_give(tmp_path: Path) -> None:
    creds = ensure_credentials(tmp_path / "credentials")
    block = authorization_block(creds, Subjects())
    with EmbeddedNats(tmp_path / "nats", port=0, extra_config=block) as server:
        cfg = agent_config(tmp_path, NatsSettings(url=server.url))
        code, out, err = await run_cli("register", "--config", str(cfg), "--log-level", "error")
        assert code == 1 and out == ""
        [line] = err.splitlines()
        assert line.startswith(f"hive-nodeagent: cannot reach NATS at {server.url}: authorization")
        assert "hive-nodeagent run --credentials PATH" in line and "compute.toml" in line
        # Given the file, the server lets it in (and no requester runs here to answer).
        compute = str(creds["compute"].path)
        code, _, err = await run_cli(
            "register", "--config", str(cfg), "--credentials", compute, "--log-level", "error"
        )
        assert code == 1
        assert err.strip() == "hive-nodeagent: no requester is answering on hive.node.register"
