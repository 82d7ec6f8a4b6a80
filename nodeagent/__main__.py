"""`hive-nodeagent`: run the compute daemon, or re-register this node with the requester.

Both commands take the same flags; each flag overrides the config file and HIVE_*
environment variables. A bad configuration is one line on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from hivectl.core.config import ConfigError, NodeAgentConfig, load_config
from hivectl.core.logs import setup_logging
from nodeagent.protocol import RegistrationError, register_node
from nodeagent.service import REQUEST_TIMEOUT, main

app = typer.Typer(
    name="hive-nodeagent",
    help=(
        "The Hive node agent: the compute daemon, one per machine.\n\n"
        "`run` starts the daemon: it registers the node with the requester (or re-joins "
        "after a restart) and reports info, resources and heartbeats.\n\n"
        "`register` registers this node again, e.g. after an operator deleted it."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (else HIVE_CONFIG).")
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Node id (default: the short hostname).")
]
NatsUrlOpt = Annotated[
    str | None, typer.Option("--nats-url", help="NATS server URL(s), comma-separated.")
]
StateDirOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where the identity and the sentinel live."),
]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", metavar="KEY=VALUE", help="Node label; repeat for more."),
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


def _load(
    config: Path | None,
    name: str | None,
    nats_url: str | None,
    state_dir: Path | None,
    labels: list[str] | None,
    log_level: str | None,
    metrics_port: int | None = None,
) -> NodeAgentConfig:
    """The layered config, or exit 2 with one line on stderr."""
    try:
        flags: dict[str, Any] = {
            "name": name,
            "state_dir": state_dir,
            "labels": _parse_labels(labels) if labels else None,
            "nats": {"url": nats_url},
            "log": {"level": log_level.upper() if log_level else None},
            "metrics": {
                "enabled": True if metrics_port is not None else None,
                "port": metrics_port,
            },
        }
        return load_config(NodeAgentConfig, config, **flags)
    except ConfigError as exc:
        typer.echo(f"hive-nodeagent: {exc}", err=True)
        raise typer.Exit(2) from None


def _parse_labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid label {item!r}: expected key=value")
        labels[key.strip()] = value.strip()
    return labels


@app.command("run")
def run_command(
    config: ConfigOpt = None,
    name: NameOpt = None,
    nats_url: NatsUrlOpt = None,
    state_dir: StateDirOpt = None,
    label: LabelOpt = None,
    log_level: LogLevelOpt = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Start the node agent daemon (SIGTERM or Ctrl-C stops it; a second one forces exit)."""
    cfg = _load(config, name, nats_url, state_dir, label, log_level, metrics_port)
    setup_logging(cfg.log.level, cfg.log.format)
    raise typer.Exit(asyncio.run(main(cfg)))


@app.command("register")
def register_command(
    config: ConfigOpt = None,
    name: NameOpt = None,
    nats_url: NatsUrlOpt = None,
    state_dir: StateDirOpt = None,
    label: LabelOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Register this node with the requester again (after an operator deleted it)."""
    cfg = _load(config, name, nats_url, state_dir, label, log_level)
    setup_logging(cfg.log.level, cfg.log.format)
    try:
        reply = asyncio.run(register_node(cfg, REQUEST_TIMEOUT))
    except RegistrationError as exc:
        typer.echo(f"hive-nodeagent: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"registered {reply.node_id}: {reply.approval}")


def run() -> None:
    """The `hive-nodeagent` console script (and `python -m nodeagent`)."""
    # prog_name keeps usage lines right under `python -m`, where argv[0] is __main__.py.
    app(prog_name="hive-nodeagent")


if __name__ == "__main__":
    run()
