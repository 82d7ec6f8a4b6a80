"""The `hivectl` console script: `--version` is answered before anything is imported.

The command tree (Typer, pydantic, nats-py and Hive's models) takes a command most of
its start-up time; printing the version needs none of it.
"""

from __future__ import annotations

import sys

from hivectl import __version__


def run() -> None:
    if sys.argv[1:] == ["--version"]:
        print(f"hivectl {__version__}")
        return
    from hivectl.cli.main import run as run_command

    run_command()
