"""`hivectl`: the operator's command line for a Hive cluster.

The root holds the global options; each noun is a Typer app in its own module, named
in NOUNS below (one line per noun). A command imports only the noun it names: the
others (jobs pull in the job models, devstack the daemons' config) would add their
import time to every `hivectl node list`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from hivectl import __version__
from hivectl.cli.common import APP_SETTINGS, GlobalOptions

HELP = """\
Operate a Hive cluster: admit compute nodes and run jobs on them.

hivectl talks to the requester over NATS. It finds NATS through, highest first:
`--nats-url`, the `HIVE_NATS__URL` environment variable, the config file (`--config`,
else `$HIVE_CONFIG`, else `~/.config/hive/hivectl.toml`) and `nats://127.0.0.1:4222`.
Global options go before the command:

```
hivectl --nats-url nats://10.0.0.5:4222 node list
hivectl --config ./hivectl.toml --timeout 10 node describe node-1
```

Data goes to stdout (`-o table|wide|json|yaml`); progress and errors go to stderr.
The exit status is 0 on success, 1 when the cluster says no or cannot be reached,
and 2 for a bad command line or configuration.
"""

# noun -> the module whose `app` (a typer.Typer, see common.noun_app) serves it
NOUNS = {
    "node": "hivectl.cli.nodes",
    "job": "hivectl.cli.jobs",
    "devstack": "hivectl.cli.devstack",
    "config": "hivectl.cli.config",
    "events": "hivectl.cli.events",
    # `user quota` for now; the users noun (add, list, remove) joins it here.
    "user": "hivectl.cli.quotas",
}

# Root options that take a value: the word after them is not the noun.
VALUE_OPTIONS = frozenset({"--config", "--nats-url", "--timeout"})

app = typer.Typer(name="hivectl", help=HELP, **APP_SETTINGS)
_mounted: set[str] = set()


def mount(nouns: Iterable[str] = NOUNS) -> typer.Typer:
    """The root app with `nouns` added (each imported once): all of them by default."""
    for noun in nouns:
        if noun in _mounted:
            continue
        module = NOUNS[noun]
        noun_app = importlib.import_module(module).app
        if not isinstance(noun_app, typer.Typer):
            raise TypeError(f"{module}.app is not a typer.Typer")
        app.add_typer(noun_app, name=noun)
        _mounted.add(noun)
    return app


def named_nouns(argv: Sequence[str]) -> list[str]:
    """The noun a command line names, or every noun when it names none (`--help`, a
    typo, shell completion), so help and errors see the whole command tree."""
    words = iter(argv)
    for word in words:
        if word in VALUE_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return [word] if word in NOUNS else list(NOUNS)
    return list(NOUNS)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hivectl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="PATH",
            help="TOML config file. Default: $HIVE_CONFIG, else ~/.config/hive/hivectl.toml.",
            show_default=False,
        ),
    ] = None,
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats-url",
            metavar="URL",
            help="NATS server(s), comma-separated, e.g. nats://10.0.0.5:4222. "
            "Overrides the config file and HIVE_NATS__URL.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            help="How long to wait for each answer from the requester: 10, 2.5 or 500ms. "
            "Default: 5s.",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Say what hivectl does (on stderr)."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    ctx.obj = GlobalOptions(config_file=config, nats_url=nats_url, timeout=timeout, verbose=verbose)


def run() -> None:
    """The `hivectl` console script (Typer turns Ctrl-C into exit 130 and quiets EPIPE)."""
    mount(named_nouns(sys.argv[1:]))
    app()


if __name__ == "__main__":
    run()
