"""`hivectl config`: read and change the TOML files of hivectl and the daemons.

Changes are validated against the program's settings before the file is written, so a
file `config set` wrote always loads; unknown keys are refused with the closest match.
An existing file is edited in place (tomlkit), so its comments and layout survive.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tomllib
from collections.abc import MutableMapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import tomli_w
import tomlkit
import typer
import yaml
from pydantic import BaseModel, SecretStr
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Table

from hivectl.cli.common import EXIT_USAGE, fail, global_options, noun_app, print_ok
from hivectl.core.config import (
    ClientConfig,
    ConfigError,
    HiveSettings,
    NodeAgentConfig,
    RequesterConfig,
    load_config,
)

app = noun_app("Show, read and change configuration files (hivectl's, or a daemon's).")


class Program(StrEnum):
    HIVECTL = "hivectl"
    REQUESTER = "requester"
    NODEAGENT = "nodeagent"


SETTINGS: dict[Program, type[HiveSettings]] = {
    Program.HIVECTL: ClientConfig,
    Program.REQUESTER: RequesterConfig,
    Program.NODEAGENT: NodeAgentConfig,
}
ProgramOption = Annotated[
    Program,
    typer.Option("--program", "-p", case_sensitive=False, help="Whose configuration."),
]
Format = Annotated[str, typer.Option("--output", "-o", help="toml, json or yaml.")]


def config_path(ctx: typer.Context, program: Program) -> Path:
    """The file the program reads: --config (hivectl's own), else HIVE_CONFIG, else usual."""
    explicit = global_options(ctx).config_file if program is Program.HIVECTL else None
    env = os.environ.get("HIVE_CONFIG")
    return explicit or (Path(env) if env else SETTINGS[program].usual_file())


def leaf_keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> field annotation, for every setting of `model`."""
    keys: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.update(leaf_keys(annotation, f"{prefix}{name}."))
        else:
            keys[prefix + name] = annotation
    return keys


def check_key(program: Program, key: str) -> None:
    keys = leaf_keys(SETTINGS[program])
    if key in keys or any(key.startswith(f"{k}.") and _is_mapping(keys[k]) for k in keys):
        return
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    fail(f"unknown {program} setting {key!r}{hint}", EXIT_USAGE)


def _is_mapping(annotation: Any) -> bool:
    return "dict" in str(annotation)


def effective(ctx: typer.Context, program: Program) -> dict[str, Any]:
    """The settings the program would run with: defaults < file < HIVE_* env."""
    path = config_path(ctx, program)
    try:
        cfg = load_config(SETTINGS[program], path if path.is_file() else None)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    data: dict[str, Any] = _plain(cfg.model_dump())
    return data


def _plain(value: Any) -> Any:
    """TOML/JSON-ready: paths as text, secrets masked, None left out."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, Path):
        return str(value)
    return value


@app.command()
def path(ctx: typer.Context, program: ProgramOption = Program.HIVECTL) -> None:
    """Print the config file the program reads (it may not exist yet)."""
    typer.echo(str(config_path(ctx, program)))


@app.command()
def show(
    ctx: typer.Context, program: ProgramOption = Program.HIVECTL, output: Format = "toml"
) -> None:
    """Print the effective configuration: defaults, then the file, then HIVE_* env."""
    data = effective(ctx, program)
    if output == "json":
        typer.echo(json.dumps(data, indent=2))
    elif output == "yaml":
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    elif output == "toml":
        typer.echo(tomli_w.dumps(data).rstrip())
    else:
        fail(f"unknown output {output!r}: use toml, json or yaml", EXIT_USAGE)


@app.command()
def get(ctx: typer.Context, key: str, program: ProgramOption = Program.HIVECTL) -> None:
    """Print one effective setting, by dotted key (`nats.url`, `timeout`)."""
    check_key(program, key)
    value: Any = effective(ctx, program)
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            fail(f"{key} is not set", 1)
        value = value[part]
    typer.echo(json.dumps(value) if isinstance(value, dict | list) else str(value))


@app.command("set")
def set_(
    ctx: typer.Context, key: str, value: str, program: ProgramOption = Program.HIVECTL
) -> None:
    """Write one setting into the config file, after checking the program accepts it.

    VALUE is read as a TOML value when it is one (`true`, `30`, `["a"]`), else as text:

    ```
    hivectl config set nats.url nats://10.0.0.5:4222
    hivectl config set --program requester auto_approve true
    hivectl config set --program nodeagent labels.zone eu-1
    ```
    """
    check_key(program, key)
    target = config_path(ctx, program)
    document: MutableMapping[str, Any] = _read(target) if target.exists() else {}
    node = document
    *parents, leaf = key.split(".")
    for part in parents:
        if part not in node:
            # A tomlkit table lands after the document's last one, with its own header.
            node[part] = tomlkit.table() if isinstance(document, tomlkit.TOMLDocument) else {}
        node = node[part]
        if not isinstance(node, MutableMapping):
            fail(f"{part} in {target} is not a table", EXIT_USAGE)
    _put(node, leaf, _parse_value(value))
    _write(target, _render(program, document))
    print_ok()


def _put(table: MutableMapping[str, Any], key: str, value: Any) -> None:
    """Set `key`; a new one goes right after the table's last value, not at its end.

    The blank lines and comments that end a table in tomlkit's model belong to whatever
    follows it, so a key appended after them would read as part of the next section
    (python-poetry/tomlkit#295). tomlkit has no public way to insert elsewhere.
    """
    body = table.value if isinstance(table, Table) else table
    if key not in table and isinstance(body, Container):
        values = [k for k, item in body.body if k is not None and not isinstance(item, Table | AoT)]
        if values:
            body._insert_after(values[-1], key, value)
    table[key] = value  # a replace, after an insert: it keeps the table's own view in step


def _read(target: Path) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(target.read_text(encoding="utf-8"))
    except TOMLKitError as exc:
        fail(f"{target} is not valid TOML: {exc}", EXIT_USAGE)


def _render(program: Program, document: MutableMapping[str, Any]) -> str:
    """The file's new text, once the program would accept exactly what it says."""
    if isinstance(document, tomlkit.TOMLDocument):
        text = tomlkit.dumps(document)
    else:
        text = tomli_w.dumps(document)
    try:
        loaded = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        fail(f"the changed file would not be valid TOML: {exc}", EXIT_USAGE)
    _validate(program, loaded)
    return text


def _write(target: Path, text: str) -> None:
    """Replace the file whole, keeping its permissions: it may hold a token or password."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_suffix(".tmp")
    temp.write_text(text, encoding="utf-8")
    if target.exists():
        shutil.copymode(target, temp)
    temp.replace(target)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _validate(program: Program, document: dict[str, Any]) -> None:
    """Refuse a document the program would refuse: file contents alone, no env."""
    try:
        SETTINGS[program].model_validate(document)
    except ValueError as exc:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            fail(f"invalid value for {where}: {message}", EXIT_USAGE)
        fail(str(exc), EXIT_USAGE)
