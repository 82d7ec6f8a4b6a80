"""Reading a job spec file (`hivectl job submit -f job.yaml|.json|.toml`).

Every problem is one line that says where: a file that does not parse names the line
the parser stopped at; an unknown field is refused with the closest known one (as the
config loader does) rather than silently dropped; and a field the spec's rules refuse
is named with, for YAML, the line it is on (`job.yaml:7: resources.cpu: '2x' is not a
CPU amount`), found from the node marks of PyYAML's composed document.

A spec file may come from anyone, so it is bounded before it is trusted: at most
MAX_SPEC_BYTES are read, and the document may nest MAX_SPEC_DEPTH deep and hold
MAX_SPEC_VALUES values. YAML is counted from the parser's events before any object is
built, and what every format built is counted again as a walk sees it, so YAML aliases
that repeat a node ("billion laughs") count every time. A file past a limit is refused
in one line naming the limit, before anything large is built.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from hivectl.cli.common import EXIT_USAGE, fail
from hivectl.core.codec import DEFAULT_MAX_DEPTH
from hivectl.core.jobs import REFUSED_FIELDS, JobSpec, ResourceRequest

SPEC_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}
# A spec travels to the requester in one NATS message, which NATS caps at max_payload
# (1 MiB unless raised): a larger file could never be submitted, so it is not read.
MAX_SPEC_BYTES = 1024 * 1024
# A JobSpec nests 2 deep (env), a whole job record (`job describe -o yaml`) 4;
# 16 is as deep as any Hive message may nest on the wire (codec.DEFAULT_MAX_DEPTH).
MAX_SPEC_DEPTH = DEFAULT_MAX_DEPTH
# A full spec holds under a thousand values, a job record as large as MAX_SPEC_BYTES
# (two thousand executions) some 60,000; more can only come from aliases.
MAX_SPEC_VALUES = 100_000
# The C parser when PyYAML was built with libyaml: ten times faster, and it refuses
# nesting past 1,000 itself rather than recursing.
YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
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
    prefix: Loc = ()  # ("spec",) when the file holds a whole job record; (3, ...) in a list
    document: int = 0  # which document of a YAML stream
    index: int | None = None  # which job of a file that holds several

    def where(self, loc: Loc) -> str:
        """`job.yaml:7` for the field at `loc` (its nearest enclosing line), else the
        path (and which job, in a file of several)."""
        full = (*self.prefix, *loc)
        line = yaml_line(self.text, full, self.document) if self.kind == "yaml" else None
        if line:
            return f"{self.path}:{line}"
        return str(self.path) if self.index is None else f"{self.path} (job {self.index + 1})"


def load_spec_files(path: Path) -> list[SpecFile]:
    """The job specs in `path`: one document, a YAML stream of several (`---`
    between them) or a list; each may be a whole job record (`spec:` inside). The
    limits apply to the whole file."""
    kind = SPEC_FORMATS.get(path.suffix.lower())
    if kind is None:
        _refuse(f"cannot read job spec {path}: use a .yaml, .yml, .json or .toml file")
    text = _read(path)
    data = _parse(path, text, kind)
    _check_size(path, data, kind)
    if isinstance(data, _Stream):
        files = [_spec_file(path, kind, text, doc, (), doc_index, doc_index)
                 for doc_index, doc in enumerate(data) if doc is not None]  # fmt: skip
    elif isinstance(data, list):
        files = [_spec_file(path, kind, text, item, (i,), 0, i) for i, item in enumerate(data)]
    else:
        files = [_spec_file(path, kind, text, data, (), 0, None)]
    if not files:
        _refuse(f"{path}: holds no job spec")
    return files


def _spec_file(
    path: Path, kind: str, text: str, data: Any, prefix: Loc, document: int, index: int | None
) -> SpecFile:
    if isinstance(data, dict) and isinstance(data.get("spec"), dict) and "job_id" in data:
        data, prefix = data["spec"], (*prefix, "spec")  # `hivectl job describe -o yaml`, again
    if not isinstance(data, dict):
        which = "" if index is None else f" (job {index + 1})"
        _refuse(f"{path}{which}: a job spec file must hold a mapping of JobSpec fields")
    spec_file = SpecFile(path, kind, text, data, prefix, document, index)
    for loc in _unknown(data):
        _refuse(f"{spec_file.where(loc)}: {_unknown_text(loc)}")
    return spec_file


class _Stream(list[Any]):
    """The documents of a YAML stream that holds more than one."""


def _read(path: Path) -> str:
    """The file's text: at most MAX_SPEC_BYTES of UTF-8, else a one-line error."""
    try:
        with path.open("rb") as file:  # read no more than the limit, whatever it is
            data = file.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        _refuse(f"cannot read job spec {path}: {exc.strerror or exc}")
    if len(data) > MAX_SPEC_BYTES:
        _refuse(
            f"{path}: larger than {MAX_SPEC_BYTES // 1024} KiB, the most a job spec may be",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        _refuse(f"{path}:{line}: not UTF-8 text (byte \\x{data[exc.start]:02x})")


def _parse(path: Path, text: str, kind: str) -> Any:
    """The document, or a one-line error naming the line the parser stopped at."""
    try:
        if kind == "json":
            return json.loads(text)
        if kind == "toml":
            return tomllib.loads(text)
        _check_yaml_events(path, text)
        documents = list(yaml.load_all(text, Loader=YamlLoader))  # a safe loader, C or Python
        if len(documents) == 1:
            return documents[0]
        return _Stream(documents) if documents else None
    except RecursionError:  # the pure-Python parsers recurse once per level
        _too_deep(path)
    except json.JSONDecodeError as exc:
        _refuse(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}")
    except tomllib.TOMLDecodeError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "TOMLDecodeError"
        found = _TOML_LINE.search(message)
        where = f"{path}:{found[1]}" if found else str(path)
        _refuse(f"{where}: not valid TOML: {_TOML_LINE.sub('', message)}")
    except yaml.YAMLError as exc:
        _refuse(
            f"{_yaml_where(path, text, exc)}: not valid YAML: {_yaml_problem(path, exc)}",
        )
    except ValueError as exc:  # a YAML date that is no date; an int of 5,000 digits
        problem = str(exc)
        if "integer string conversion" in problem:  # Python's guard against slow ints
            problem = f"a number longer than {sys.get_int_max_str_digits()} digits"
        _refuse(f"{path}: cannot read it: {problem}")


def _yaml_where(path: Path, text: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"{path}:{mark.line + 1}"
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML allows nowhere
        return f"{path}:{text.count(chr(10), 0, exc.position) + 1}"
    return str(path)


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    problem: str = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "maximum nesting depth" in problem:  # libyaml's own limit, past ours
        _too_deep(path)
    return problem


def _refuse(message: str) -> NoReturn:
    """A spec file hivectl will not send: bad input, exit 2 (nothing reached the cluster)."""
    fail(message, EXIT_USAGE)


def _too_deep(path: Path) -> NoReturn:
    _refuse(f"{path}: nested deeper than {MAX_SPEC_DEPTH} levels, the most a job spec may be")


def _too_many(path: Path, aliased: bool) -> NoReturn:
    aliases = " (YAML aliases count each time they repeat a node)" if aliased else ""
    _refuse(f"{path}: more than {MAX_SPEC_VALUES} values, the most a job spec may hold{aliases}")


def _check_yaml_events(path: Path, text: str) -> None:
    """Depth and size from the parser's events, before any object is built: building
    them costs ten times more (a 1 MiB list would take a second and 160 MB)."""
    depth = count = 0
    for event in yaml.parse(text, Loader=YamlLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_SPEC_DEPTH:
                _too_deep(path)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            continue
        elif not isinstance(event, yaml.NodeEvent):
            continue  # stream and document marks
        count += 1  # a key, a value or an item, each once (aliases: see _check_size)
        if count > MAX_SPEC_VALUES:
            _too_many(path, aliased=False)


def _check_size(path: Path, data: Any, kind: str) -> None:
    """Refuse a document nested deeper than MAX_SPEC_DEPTH or holding more than
    MAX_SPEC_VALUES values. It walks one level at a time, counting each container's
    items as it goes, so a node repeated by aliases is counted (and stops the walk)
    without ever being expanded."""
    level = [data] if isinstance(data, dict | list) else []
    depth = count = 0
    while level:
        depth += 1
        if depth > MAX_SPEC_DEPTH:
            _too_deep(path)
        inner: list[Any] = []
        for value in level:
            items = value.values() if isinstance(value, dict) else value
            count += len(items)
            if count > MAX_SPEC_VALUES:
                _too_many(path, aliased=kind == "yaml")
            inner += [item for item in items if isinstance(item, dict | list)]
        level = inner


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


def yaml_line(text: str, loc: Loc, document: int = 0) -> int | None:
    """The 1-based line of the YAML node at `loc` in the `document`-th document, or of
    the closest node above it."""
    try:
        documents = list(yaml.compose_all(text, Loader=YamlLoader))
    except yaml.YAMLError:
        return None
    node = documents[document] if document < len(documents) else None
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
