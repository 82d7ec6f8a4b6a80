"""`hive-requester`: run the requester daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from hivectl.core.config import ConfigError, RequesterConfig, load_config
from hivectl.core.daemon import install_signal_handlers
from hivectl.core.embedded import EmbeddedNatsError
from hivectl.core.logs import setup_logging
from requester.service import Requester

app = typer.Typer(
    help="The Hive requester: admits compute nodes, tracks their health, serves hivectl.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Keep `run` a named subcommand, as `hive-nodeagent run` is."""


_CONFIG_HELP = "TOML config file (default: /etc/hive/requester.toml, or HIVE_CONFIG)."
_NATS_HELP = "An external NATS to use instead of the embedded server (implies --no-embedded)."
_APPROVE_HELP = "Approve newly registered nodes at once (default: they wait as PENDING)."


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="TOML config file (default: /etc/hive/requester.toml)."
        ),
    ] = None,
    nats_url: Annotated[
        str | None,
        typer.Option(help=_NATS_HELP),
    ] = None,
    embedded: Annotated[
        bool | None, typer.Option("--embedded/--no-embedded", help="Run an embedded nats-server.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Client port of the embedded nats-server.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where identity and NATS data live.")
    ] = None,
    auto_approve: Annotated[
        bool | None,
        typer.Option("--auto-approve/--no-auto-approve", help=_APPROVE_HELP),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port (0: any free port).")
    ] = None,
) -> None:
    """Run the requester until SIGTERM or Ctrl-C (a second one forces exit).

    Settings come from defaults, then the TOML file, then HIVE_* environment variables
    (HIVE_NATS__URL, HIVE_AUTO_APPROVE, ...), then these flags.
    """
    if nats_url is not None and embedded is None:
        embedded = False
    try:
        cfg = load_config(
            RequesterConfig,
            config,
            nats={"url": nats_url},
            embedded={"enabled": embedded, "port": port},
            data_dir=data_dir,
            auto_approve=auto_approve,
            log={"level": log_level.upper() if log_level else None},
            metrics={"enabled": True if metrics_port is not None else None, "port": metrics_port},
        )
    except ConfigError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(cfg.log.level, cfg.log.format)
    try:
        failure = asyncio.run(_main(cfg))
    except EmbeddedNatsError as exc:
        typer.echo(f"Error: embedded NATS: {exc}", err=True)
        raise typer.Exit(1) from None
    if failure:
        typer.echo(f"Error: {failure}", err=True)
        raise typer.Exit(1)


async def _main(cfg: RequesterConfig) -> str:
    """Serve until stopped; why it stopped on its own ('' after a signal)."""
    requester = Requester(cfg)
    install_signal_handlers(requester.stopping, "requester")
    await requester.serve()
    return requester.failure


def main() -> None:
    app()


if __name__ == "__main__":
    main()
