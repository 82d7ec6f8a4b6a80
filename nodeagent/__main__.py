"""`hive-nodeagent`: run the compute daemon, re-register this node, or show who it is.

Each flag overrides the config file and HIVE_* environment variables. `register` and
`id` act on the node `run` is: they read its state dir (the same default: $STATE_DIRECTORY,
else /var/lib/hive-nodeagent as root, else the user's data dir) and the flags `run` was
last given there (see `nodeagent.runflags`). Exit status: 0 on success and after a clean
stop, 1 for a failure at run time, 2 for a bad command line or configuration (one line
on stderr), 130 when a second signal forced the daemon out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from hivectl import __version__
from hivectl.core.auth import fingerprint
from hivectl.core.config import ConfigError, NodeAgentConfig, load_config
from hivectl.core.daemon import exit_on_signal_until_loop
from hivectl.core.logs import setup_logging
from nodeagent.identity import read_identity, resolve_node_id
from nodeagent.protocol import RegistrationError, register_node
from nodeagent.runflags import given, load_run_flags, merge, save_run_flags
from nodeagent.service import REQUEST_TIMEOUT, main

app = typer.Typer(
    name="hive-nodeagent",
    help=(
        "The Hive node agent: the compute daemon, one per machine.\n\n"
        "`run` starts the daemon: it registers the node with the requester (or re-joins "
        "after a restart) and reports info, resources and heartbeats.\n\n"
        "`register` registers this node again, e.g. after an operator deleted it.\n\n"
        "`id` prints the node id and key fingerprint, to compare with "
        "`hivectl node describe` before approving the node."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (default: $HIVE_CONFIG, else /etc/hive/nodeagent.toml as root, "
        "~/.config/hive/nodeagent.toml otherwise).",
    ),
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Node id (default: the short hostname).")
]
NatsUrlOpt = Annotated[
    str | None, typer.Option("--nats-url", help="NATS server URL(s), comma-separated.")
]
CredentialsOpt = Annotated[
    Path | None,
    typer.Option(
        "--credentials",
        metavar="PATH",
        help="NATS credentials: compute.toml from the requester's credentials dir "
        "(as [nats] credentials_file).",
    ),
]
StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Where the identity and the sentinel live (default: $STATE_DIRECTORY, else "
        "/var/lib/hive-nodeagent as root, ~/.local/share/hive/nodeagent otherwise).",
    ),
]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", metavar="KEY=VALUE", help="Node label; repeat for more."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        help="Enrollment token from `hivectl node token create`: a valid one approves the "
        "node when it registers (also HIVE_TOKEN, or `token` in the config file).",
        show_default=False,
    ),
]
LogLevelOpt = Annotated[
    str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
]
MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        "--metrics-port", help="Serve Prometheus metrics on this port (0: any free port)."
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hive-nodeagent {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Global options; the work is in the commands."""


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"hive-nodeagent: {message}", err=True)
    return typer.Exit(code)


def _node_flags(
    name: str | None, nats_url: str | None, credentials: Path | None, labels: list[str] | None
) -> dict[str, Any]:
    """What the command line says about the node (None: not given)."""
    try:
        parsed = _parse_labels(labels) if labels else None
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    return given(
        {"name": name, "labels": parsed, "nats": {"url": nats_url, "credentials_file": credentials}}
    )


def _parse_labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid label {item!r}: expected key=value")
        labels[key.strip()] = value.strip()
    return labels


def _load(config: Path | None, **flags: Any) -> NodeAgentConfig:
    """The layered config, or exit 2 with one line on stderr."""
    try:
        return load_config(NodeAgentConfig, config, **flags)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None


def _load_as_run(
    config: Path | None, state_dir: Path | None, node: dict[str, Any], log_level: str | None
) -> NodeAgentConfig:
    """The config of the agent `run` is with this state dir: its flags under ours."""
    found = _load(config, state_dir=state_dir, **node)
    saved = load_run_flags(found.state_dir)
    if not saved:
        return _load(config, state_dir=state_dir, **node, log=_log(log_level))
    run_config = saved.pop("config", None)
    config = config or (Path(run_config) if run_config else None)
    flags = merge(saved, node)
    return _load(config, state_dir=found.state_dir, **flags, log=_log(log_level))


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _log(level: str | None) -> dict[str, Any]:
    return {"level": level.upper() if level else None}


@app.command("run")
def run_command(
    config: ConfigOpt = None,
    name: NameOpt = None,
    nats_url: NatsUrlOpt = None,
    credentials: CredentialsOpt = None,
    state_dir: StateDirOpt = None,
    label: LabelOpt = None,
    token: TokenOpt = None,
    log_level: LogLevelOpt = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Start the node agent daemon (SIGTERM or Ctrl-C stops it; a second one forces exit)."""
    node = _node_flags(name, nats_url, credentials, label)
    metrics = {"enabled": True if metrics_port is not None else None, "port": metrics_port}
    cfg = _load(
        config, state_dir=state_dir, **node, token=token, log=_log(log_level), metrics=metrics
    )
    setup_logging(cfg.log.level, cfg.log.format)
    explicit = config or _env_path("HIVE_CONFIG")
    # A state dir it cannot write: the agent says so itself, in one line, when it starts.
    with contextlib.suppress(OSError):
        save_run_flags(cfg.state_dir, {"config": explicit, **node})
    raise typer.Exit(asyncio.run(main(cfg)))


@app.command("register")
def register_command(
    config: ConfigOpt = None,
    name: NameOpt = None,
    nats_url: NatsUrlOpt = None,
    credentials: CredentialsOpt = None,
    state_dir: StateDirOpt = None,
    label: LabelOpt = None,
    token: TokenOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Register this node with the requester again (after an operator deleted it).

    Uses the state dir, config and flags of `hive-nodeagent run`, so it registers the
    same node (id and key) with the same labels; flags given here win. A token is not
    kept from `run` (it is spent at the first registration): give one here, or the
    node comes back PENDING.
    """
    node = _node_flags(name, nats_url, credentials, label)
    cfg = _load_as_run(config, state_dir, {**node, **given({"token": token})}, log_level)
    setup_logging(cfg.log.level, cfg.log.format)
    try:
        reply = asyncio.run(register_node(cfg, REQUEST_TIMEOUT))
    except RegistrationError as exc:
        raise _fail(str(exc), 1) from None
    why = f" ({reply.reason})" if reply.reason else ""
    typer.echo(f"registered {reply.node_id}: {reply.approval}{why}")


@app.command("id")
def id_command(
    config: ConfigOpt = None,
    name: NameOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Print this node's id and key fingerprint, as `hivectl node describe` shows them.

    Reads the identity `run` created; creates none (a key made here, in a state dir the
    agent does not use, would show a fingerprint that matches nothing).
    """
    cfg = _load_as_run(config, state_dir, given({"name": name}), None)
    try:
        identity = read_identity(cfg.state_dir)
    except (OSError, ValueError) as exc:
        raise _fail(str(exc), 1) from None
    if identity is None:
        raise _fail(
            f"no identity in {cfg.state_dir} yet: `hive-nodeagent run` creates it on first "
            "start (an agent already running uses another state dir: give its --state-dir)",
            1,
        )
    key = identity.public_key
    rows = [
        ("ID", resolve_node_id(cfg.name, key)),
        ("Fingerprint", fingerprint(key)),
        ("Public key", key),
        ("State dir", str(cfg.state_dir)),
    ]
    typer.echo("\n".join(f"{label + ':':<17}{value}" for label, value in rows))


def run() -> None:
    """The `hive-nodeagent` console script (and `python -m nodeagent`)."""
    exit_on_signal_until_loop()
    # prog_name keeps usage lines right under `python -m`, where argv[0] is __main__.py.
    app(prog_name="hive-nodeagent")


if __name__ == "__main__":
    run()
