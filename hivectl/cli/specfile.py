"""Reading a job spec file (`hivectl job submit -f job.yaml|.json|.toml`).

Every problem is one line that says where: a file that does not parse names the line
the parser stopped at; an unknown field is refused with the closest known one (as the
config loader does) rather than silently dropped; and a field the spec's rules refuse
is named with, for YAML, the line it is on (`job.yaml:7: resources.cpu: '2x' is not a
CPU amount`), found from the node marks of PyYAML's composed document.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hivectl.cli.common import EXIT_USAGE, fail
from hivectl.core.jobs import REFUSED_FIELDS, JobSpec, ResourceRequest

SPEC_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}
Loc = tuple[str | int, ...]
_TOML_LINE = re.compile(r"\s*\(at line (\d+), column \d+\)")
# Fields by mapping: JobSpec's own, and those of its one nested model. Env names are
# the job's own, checked by JobSpec; the refused fields get their own reason there.
_KNOWN: dict[Loc, Sequence[str]] = {
    (): list(JobSpec.model_fields),
    ("resources",): list(ResourceRequest.model_fields),
}


@dataclass(frozen=True)
class SpecFile:
    """A parsed spec file: its JobSpec fields, and how to say where a field is."""

    path: Path
    kind: str  # "yaml" | "json" | "toml"
    text: str
    data: dict[str, Any]
    prefix: Loc = ()  # ("spec",) when the file holds a whole job record

    def where(self, loc: Loc) -> str:
        """`job.yaml:7` for the field at `loc` (its nearest enclosing line), else the path."""
        line = yaml_line(self.text, (*self.prefix, *loc)) if self.kind == "yaml" else None
        return f"{self.path}:{line}" if line else str(self.path)


def load_spec_file(path: Path) -> SpecFile:
    """The spec document in `path`; also accepts a whole job record (`spec:` inside)."""
    kind = SPEC_FORMATS.get(path.suffix.lower())
    if kind is None:
        fail(f"cannot read job spec {path}: use a .yaml, .yml, .json or .toml file", EXIT_USAGE)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read job spec {path}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE)
    data = _parse(path, text, kind)
    prefix: Loc = ()
    if isinstance(data, dict) and isinstance(data.get("spec"), dict) and "job_id" in data:
        data, prefix = data["spec"], ("spec",)  # `hivectl job describe -o yaml`, again
    if not isinstance(data, dict):
        fail(f"{path}: a job spec file must hold a mapping of JobSpec fields", EXIT_USAGE)
    spec_file = SpecFile(path, kind, text, data, prefix)
    for loc in _unknown(data):
        fail(f"{spec_file.where(loc)}: {_unknown_text(loc)}", EXIT_USAGE)
    return spec_file


def _parse(path: Path, text: str, kind: str) -> Any:
    """The document, or a one-line error naming the line the parser stopped at."""
    try:
        if kind == "json":
            return json.loads(text)
        if kind == "toml":
            return tomllib.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        fail(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}", EXIT_USAGE)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "TOMLDecodeError"
        found = _TOML_LINE.search(message)
        where = f"{path}:{found[1]}" if found else str(path)
        fail(f"{where}: not valid TOML: {_TOML_LINE.sub('', message)}", EXIT_USAGE)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        fail(f"{where}: not valid YAML: {problem}", EXIT_USAGE)


def _unknown(data: dict[Any, Any]) -> Iterator[Loc]:
    """The locations of keys no JobSpec field has, in file order."""
    for parent, known in _KNOWN.items():
        mapping = data if not parent else data.get(parent[0])
        if not isinstance(mapping, dict):
            continue
        for key in mapping:
            if key not in known and (parent or key not in REFUSED_FIELDS):
                yield (*parent, str(key))


def _unknown_text(loc: Loc) -> str:
    """`unknown field 'comand' (did you mean 'command'?)`, else the fields there are."""
    *parent, key = (str(part) for part in loc)
    known = _KNOWN[tuple(parent)]
    dotted = ".".join([*parent, key])
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown field {dotted!r} (did you mean {'.'.join([*parent, close[0]])!r}?)"
    return f"unknown field {dotted!r} (known fields: {', '.join(known)})"


def yaml_line(text: str, loc: Loc) -> int | None:
    """The 1-based line of the YAML node at `loc`, or of the closest node above it."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child, line = value, key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part >= 0:
            child = node.value[part] if part < len(node.value) else None
            line = child.start_mark.line + 1 if child is not None else line
        if child is None:
            break
        node = child
    return line
