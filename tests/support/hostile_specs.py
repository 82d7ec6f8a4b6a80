"""Spec files that an attacker, or an accident, hands to `hivectl job submit -f`.

Each is a file name (its suffix picks the parser), a function that makes its bytes, and
a piece of the one line hivectl must refuse it with. The fuzz tests run each through a
real `hivectl` process; bench/hostile_specs.py measures the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

HUGE_BYTES = 50 * 1000 * 1000  # the 50 MB spec an SRE fed it


@dataclass(frozen=True)
class HostileSpec:
    name: str  # the file's name: its suffix picks the parser
    make: Callable[[], bytes]
    says: str  # part of the one-line refusal, after `Error: <path>`


def laughs() -> bytes:
    """The "billion laughs": nine levels of nine aliases to the level below, 9**9
    strings once expanded, in under a kilobyte. The anchors sit under `env`, whose
    keys are free, so no unknown field refuses the file before its size is counted."""
    lines = ["engine: process", "env:", f"  L0: &l0 [{', '.join(['lol'] * 9)}]"]
    for level in range(1, 10):
        lines.append(f"  L{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return ("\n".join(lines) + "\ncommand: *l9\n").encode()


def huge() -> bytes:
    line = b"  - an argument that is here only to make the file large\n"
    return b"engine: process\ncommand:\n" + line * (HUGE_BYTES // len(line) + 1)


def deep(open_: str, close: str, levels: int = 100_000) -> Callable[[], bytes]:
    return lambda: f"{open_ * levels}{close * levels}".encode()


DEEP = "nested deeper than 16 levels"
CONTROL = "contains a control character"
HOSTILE_SPECS = [
    HostileSpec("deep-flow.yaml", lambda: b"command: " + deep("[", "]")(), DEEP),
    HostileSpec("deep-block.yaml", lambda: b"command:\n" + b"- " * 400_000 + b"x\n", DEEP),
    HostileSpec("deep-map.yaml", lambda: b"".join(b" " * i + b"a:\n" for i in range(1200)), DEEP),
    HostileSpec("deep.json", lambda: b'{"command": ' + deep("[", "]")() + b"}", DEEP),
    HostileSpec("deep.toml", lambda: b"command = " + deep("[", "]", 5000)() + b"\n", DEEP),
    HostileSpec("huge.yaml", huge, "larger than 1024 KiB"),
    HostileSpec("laughs.yaml", laughs, "more than 100000 values"),
    HostileSpec("nul-raw.yaml", lambda: b'command: ["echo", "a\x00b"]\n', "unacceptable character"),
    HostileSpec(
        "nul.yaml",
        lambda: b'engine: process\ncommand: ["echo", "a\\0b"]\n',
        f"command.1: {CONTROL}",
    ),
    HostileSpec(
        "nul.json",
        lambda: b'{"engine": "process", "command": ["echo"], "env": {"A": "\\u0000"}}',
        f"env.A: {CONTROL} (\\x00)",
    ),
    HostileSpec(
        "nul.toml", lambda: b'engine = "process"\ncommand = ["true"]\nname = "\\u0000"\n', CONTROL
    ),
    HostileSpec(
        "escape.json",
        lambda: b'{"engine": "process", "command": ["true"], "name": "\\u001b]0;pwned\\u0007"}',
        f"name: {CONTROL} (\\x1b)",
    ),
    HostileSpec(
        "cr.yaml", lambda: b'engine: process\ncommand: [sh, -c, "true\\r"]\n', "command.2: "
    ),
    HostileSpec("latin1.yaml", lambda: b"engine: process\nname: caf\xe9\n", ":2: not UTF-8 text"),
    HostileSpec("binary.json", lambda: bytes(range(256)) * 4, "not UTF-8 text (byte \\x80)"),
    HostileSpec("bigint.json", lambda: b'{"count": ' + b"9" * 5000 + b"}", "4300 digits"),
]

# Not hostile but as large as the limits let a spec be: the slowest file hivectl must
# read whole (bench only: its time is the worst case below the limits, not a deadline).
EDGE_SPECS = [
    HostileSpec(
        "values-at-the-limit.yaml",
        lambda: b"engine: process\ncommand: [" + b"a, " * 99_990 + b"a]\n",
        "command: List should have at most 256 items",
    ),
]
