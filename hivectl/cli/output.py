"""Rendering data for people and for scripts: tables, JSON, YAML and human units.

Tables go to stdout as columns padded with spaces, never truncated or wrapped, the
same on a terminal (where the header is bold) as in a pipe, so `awk`, `cut` and tests
read what a person sees. Nothing here imports rich (45 ms): a `node list` at a
terminal need not pay for it. JSON and YAML are serialised by pydantic-core and PyYAML
directly, because `-o json` over ten thousand nodes must stay fast.

Text for people never carries a control character raw: a job's name, a node's hostname
or a reason comes from someone else, and `\x1b]...` in it would drive the terminal of
whoever lists it. Cells, describe lines and messages show them as escapes (`\x1b`);
JSON and YAML escape them by their own rules.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TextIO

import pydantic_core
from pydantic import BaseModel, TypeAdapter

NONE = "-"  # what a cell shows when there is nothing to show
COLUMN_GAP = "   "
_BOLD, _RESET = "\x1b[1m", "\x1b[0m"
_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
# C0 and C1 controls, DEL, the line and paragraph separators, the bidi controls that
# reorder what a terminal shows ("Trojan Source"), and lone surrogates, which cannot be
# encoded at all.
_UNSEEN = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


class OutputFormat(StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"

    @property
    def is_data(self) -> bool:
        """JSON or YAML: the complete records, for scripts."""
        return self in (OutputFormat.JSON, OutputFormat.YAML)


def visible(text: str) -> str:
    """`text` on one line with every control character shown as an escape (`\\x1b`)."""
    if _UNSEEN.search(text) is None:  # nearly always: no copy
        return text
    return _UNSEEN.sub(_escaped, text)


def _escaped(found: re.Match[str]) -> str:
    char = found[0]
    if char in _SHORT:
        return _SHORT[char]
    return f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"


# -- units ---------------------------------------------------------------------------


def human_bytes(value: int | None, *, short: bool = False) -> str:
    """Bytes in IEC units with one decimal: `512B`, `1.5KiB`, `12.3GiB`. `short`: the
    decimal only below 10, as `df -h` writes sizes: `1.5KiB`, `12GiB`."""
    if value is None:
        return NONE
    size = float(value)
    for unit in _IEC:
        if size < 1024 or unit == _IEC[-1]:
            break
        size /= 1024
    if unit == "B":
        return f"{int(size)}B"
    return f"{size:.0f}{unit}" if short and size >= 9.95 else f"{size:.1f}{unit}"


def human_bytes_of(part: int | None, whole: int | None, *, short: bool = False) -> str:
    """`part/whole` in bytes, the unit written once when both share it: `12.3/16.0GiB`,
    `512.0MiB/2.0GiB`, `-/16.0GiB`; `short` as for `human_bytes`."""
    left, right = human_bytes(part, short=short), human_bytes(whole, short=short)
    unit = right.lstrip("0123456789.")
    if part is not None and whole is not None and left.lstrip("0123456789.") == unit:
        left = left.removesuffix(unit)
    return f"{left}/{right}"


def human_cpu(value: float | None) -> str:
    """Cores without noise: `8`, `7.5`, `0.25`."""
    if value is None:
        return NONE
    return f"{round(value, 2):g}"


def human_count(value: int | None) -> str:
    return NONE if value is None else str(value)


def age(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago, in one unit: `3s ago`, `5m ago`, `2h ago`, `4d ago`; `-` if never."""
    if when is None:
        return NONE
    now = now or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m ago"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def timestamp(when: datetime | None, now: datetime | None = None) -> str:
    """`2024-05-01 12:00:00 UTC (3s ago)`, or `-`."""
    if when is None:
        return NONE
    utc = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return f"{utc:%Y-%m-%d %H:%M:%S} UTC ({age(utc, now)})"


def counted(count: int, noun: str, plural: str = "") -> str:
    """`1 node`, `3 nodes`, `0 nodes`: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def join_labels(labels: dict[str, str] | None) -> str:
    """`k=v` pairs sorted by key and comma-joined; `-` when there are none."""
    if not labels:
        return NONE
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


# -- tables --------------------------------------------------------------------------


def plain_lines(rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as lines of left-aligned columns; the last column is not padded."""
    table = [[visible(cell) for cell in row] for row in rows]
    if not table:
        return []
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append(COLUMN_GAP.join([*cells, row[-1]]))
    return lines


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, no_headers: bool = False
) -> None:
    """A table on stdout: left-aligned columns, never cut or wrapped (a terminal narrower
    than a row wraps it, as with kubectl); the header is bold on a colour terminal."""
    lines = plain_lines(rows if no_headers else [headers, *rows])
    if lines and not no_headers and _styled(sys.stdout):
        lines[0] = f"{_BOLD}{lines[0]}{_RESET}"
    _write("\n".join(lines))  # plain_lines made every cell visible


def _styled(stream: TextIO) -> bool:
    """A terminal that takes escape codes, and no NO_COLOR (no-color.org) asking not to."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


# -- data ----------------------------------------------------------------------------


def dump_json(data: Any) -> str:
    """Indented JSON. Pydantic models come out as `model_dump(mode="json")` has them,
    serialised in Rust: ten times faster than `json.dumps(..., indent=2)`."""
    return _json_bytes(data).decode()


def _json_bytes(data: Any) -> bytes:
    if isinstance(data, list) and data and isinstance(data[0], BaseModel):
        model = type(data[0])
        if all(type(item) is model for item in data):
            # A serializer that knows the item type: a third faster than inferring it
            # for each of 10,000 nodes.
            return _list_of(model).dump_json(data, indent=2)
    return pydantic_core.to_json(data, indent=2)


@functools.cache
def _list_of(model: type[BaseModel]) -> TypeAdapter[list[Any]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def dump_yaml(data: Any) -> str:
    """Block-style YAML of the same data as `dump_json`, keys in model order."""
    import yaml  # here: 13 ms of imports only `-o yaml` needs

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # the C emitter when built
    text: str = yaml.dump(
        pydantic_core.to_jsonable_python(data),
        Dumper=dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
    )
    return text


def print_data(data: Any, fmt: OutputFormat) -> None:
    """`data` (models, or plain dicts and lists of them) as JSON or YAML on stdout."""
    binary = getattr(sys.stdout, "buffer", None)
    if fmt is OutputFormat.JSON and binary is not None:
        # Bytes straight to stdout: 13 MB of JSON for 10,000 nodes need not become a
        # str and be encoded back.
        sys.stdout.flush()
        binary.write(_json_bytes(data) + b"\n")
        binary.flush()
    elif fmt is OutputFormat.JSON:
        _write(dump_json(data))
    else:
        _write(dump_yaml(data).rstrip("\n"))


def write_lines(lines: Iterable[str]) -> None:
    """Lines for people on stdout (a describe view), each shown with `visible`."""
    _write("\n".join(visible(line) for line in lines))


def write_out(text: str) -> None:
    """One block of text on stdout, ending with a newline (nothing for empty text);
    control characters other than its line breaks are shown as escapes."""
    _write("\n".join(visible(line) for line in text.split("\n")))


def _write(text: str) -> None:
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
