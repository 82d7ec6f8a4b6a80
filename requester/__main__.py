"""`hive-requester`: run the requester daemon.

Exit status: 0 after a clean stop (SIGTERM, Ctrl-C), 1 when it fails at run time, 2 for
a bad command line or configuration (one line on stderr), 130 when a second signal
forced it out.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from hivectl import __version__
from hivectl.core.config import ConfigError, RequesterConfig, load_config
from hivectl.core.daemon import exit_on_signal_until_loop, install_signal_handlers
from hivectl.core.embedded import EmbeddedNatsError
from hivectl.core.logs import setup_logging
from requester.identity import ClusterIdentityError
from requester.provision import StoreSetupError
from requester.service import Requester
from requester.store import StoreUnavailable

log = logging.getLogger("hive.requester")

app = typer.Typer(
    name="hive-requester",
    help="The Hive requester: admits compute nodes, tracks their health, serves hivectl.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hive-requester {__version__}")
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
    """Keep `run` a named subcommand, as `hive-nodeagent run` is."""


_CONFIG_HELP = (
    "TOML config file (default: $HIVE_CONFIG, else /etc/hive/requester.toml as root, "
    "~/.config/hive/requester.toml otherwise)."
)
_NATS_HELP = "An external NATS to use instead of the embedded server (implies --no-embedded)."
_CREDENTIALS_HELP = (
    "Credentials for an external NATS: a Hive role credentials file ([nats] user and "
    "password), as [nats] credentials_file."
)
_HOST_HELP = (
    "Address the embedded nats-server listens on (default 127.0.0.1; 0.0.0.0 lets "
    "agents on other machines in)."
)
_DATA_HELP = (
    "Where identity, role credentials and NATS data live (default: $STATE_DIRECTORY, else "
    "/var/lib/hive-requester as root, ~/.local/share/hive/requester otherwise)."
)
_APPROVE_HELP = "Approve newly registered nodes at once (default: they wait as PENDING)."
_NAME_HELP = (
    "This requester's id in `hivectl node list` and in its logs (default: requester); "
    "each requester of a cluster needs its own."
)


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help=_CONFIG_HELP)] = None,
    name: Annotated[str | None, typer.Option(help=_NAME_HELP)] = None,
    nats_url: Annotated[str | None, typer.Option(help=_NATS_HELP)] = None,
    credentials: Annotated[
        Path | None, typer.Option("--credentials", metavar="PATH", help=_CREDENTIALS_HELP)
    ] = None,
    embedded: Annotated[
        bool | None, typer.Option("--embedded/--no-embedded", help="Run an embedded nats-server.")
    ] = None,
    host: Annotated[str | None, typer.Option(help=_HOST_HELP)] = None,
    port: Annotated[
        int | None, typer.Option(help="Client port of the embedded nats-server (default 4222).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_HELP)] = None,
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
            name=name,
            nats={"url": nats_url, "credentials_file": credentials},
            embedded={"enabled": embedded, "host": host, "port": port},
            data_dir=data_dir,
            auto_approve=auto_approve,
            log={"level": log_level.upper() if log_level else None},
            metrics={"enabled": True if metrics_port is not None else None, "port": metrics_port},
        )
    except ConfigError as exc:
        typer.echo(f"hive-requester: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(cfg.log.level, cfg.log.format)
    raise typer.Exit(asyncio.run(_main(cfg)))


async def _main(cfg: RequesterConfig) -> int:
    """Serve until stopped; the exit status (1 when it failed, with one line why)."""
    import stamina.instrumentation

    # The store logs when JetStream stops and starts answering; stamina's own hooks
    # would log every retry of every call through a leader election.
    stamina.instrumentation.set_on_retry_hooks([])
    requester = Requester(cfg)
    install_signal_handlers(requester.stopping, "requester")
    try:
        await requester.serve()
    except EmbeddedNatsError as exc:
        log.error("requester %s failed: embedded NATS: %s", cfg.name, exc)
        return 1
    except (StoreSetupError, StoreUnavailable, ClusterIdentityError) as exc:
        log.error("requester %s failed: %s", cfg.name, exc)  # the operator's to fix
        return 1
    except Exception as exc:
        # A data dir it cannot write is the operator's to fix: no traceback for that.
        log.error("requester %s failed: %s", cfg.name, exc, exc_info=not isinstance(exc, OSError))
        return 1
    if requester.failure:  # it stopped on its own (its embedded NATS died): say why
        log.error("requester %s stopped: %s", cfg.name, requester.failure)
        return 1
    return 0


def main() -> None:
    exit_on_signal_until_loop()
    app()


if __name__ == "__main__":
    main()
