"""Hostile spec files for `hivectl job submit -f`, the client side of the fuzz suite.

test_fuzz.py storms the daemons; here the input is a file an operator was handed.
Every hostile file of tests/support/hostile_specs.py (deep nesting, 50 MB, NUL and
other control characters, a billion laughs, bytes that are not UTF-8) goes through a
real `hivectl` process, which must refuse it with one line on stderr and a non-zero exit
within 2 seconds (a deadline, as the issue asks: a runaway parse takes a minute). Then
hypothesis writes 800 random and half-valid documents, run in-process: each
one is a spec or one line, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hivectl.cli.main import mount
from hivectl.cli.specfile import MAX_SPEC_BYTES
from tests.support.hostile_specs import HOSTILE_SPECS, HostileSpec

DEADLINE_S = 2.0
NOWHERE = "nats://127.0.0.1:1"  # nothing listens: a spec that passes fails to connect
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
app = mount(["job"])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "hivectl.toml"
    empty.write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    return clean | {"HIVE_CONFIG": str(empty)}


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("Error: "), lines[0]
    assert not RAW_CONTROL.search(lines[0]), repr(lines[0])
    return lines[0]


@pytest.mark.parametrize("hostile", HOSTILE_SPECS, ids=lambda h: h.name)
def test_a_hostile_spec_file_is_one_line_and_exit_2_within_2s(
    hostile: HostileSpec, tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / hostile.name
    path.write_bytes(hostile.make())
    argv = [sys.executable, "-m", "hivectl.cli.main", "--nats-url", NOWHERE,
            "job", "submit", "-f", str(path)]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    elapsed = time.monotonic() - started
    line = one_line(done.stderr.decode())  # strict: what it prints is UTF-8
    assert line.startswith(f"Error: {path}"), line
    assert hostile.says in line, line
    assert (done.returncode, done.stdout) == (2, b"")  # bad input: refused, nothing sent
    assert elapsed < DEADLINE_S, f"{hostile.name} took {elapsed:.2f}s"


# -- hypothesis ----------------------------------------------------------------------

# Text with what makes parsers and terminals misbehave, and a few real field names.
HOSTILE_CHARS = [*"ab -_=/.:", "\x00", "\x1b", "\t", "\n", "\r", "\x7f", "\x85",
                 "\u202e", "\udcff", "é", "😀"]  # fmt: skip
hostile_text = st.text(alphabet=st.sampled_from(HOSTILE_CHARS), max_size=12)
fields = st.sampled_from(
    ["name", "image", "command", "env", "workdir", "outputs", "constraints", "engine",
     "resources", "count", "spec", "job_id", "privileged", "x"]
)  # fmt: skip
values = st.recursive(
    st.one_of(hostile_text, st.integers(-(2**70), 2**70), st.booleans(), st.floats()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(fields, values, max_size=6).map(
    lambda doc: {"engine": "process", "command": ["true"], **doc}
)
# Syntax soup: the characters YAML, JSON and TOML give meaning to, shuffled.
soup = st.text(alphabet=st.sampled_from([*"[]{}:,-&*!|>'\"#=\n \t\\\x00\x1bab1."]), max_size=80)


def serialise(doc: dict[str, Any], kind: str) -> bytes:
    """The document as a file of `kind`; surrogates stay escaped in JSON and are
    replaced elsewhere (YAML and TOML writers cannot write them)."""
    if kind == "json":
        return json.dumps(doc).encode()
    if kind == "toml":
        try:
            return tomli_w.dumps(doc).encode(errors="replace")
        except (TypeError, ValueError):
            return json.dumps(doc).encode()  # no TOML for it: the parser refuses the JSON
    return yaml.safe_dump(doc, allow_unicode=True).encode(errors="replace")


def submit_in_process(path: Path) -> None:
    result = CliRunner().invoke(app, ["--nats-url", NOWHERE, "job", "submit", "-f", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (1, 2), (result.exit_code, result.stderr)
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith((f"Error: {path}", "Error: invalid job spec: ")) or (
        f"cannot reach NATS at {NOWHERE}" in line  # a valid spec, refused by nobody
    ), line


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(doc=documents, kind=st.sampled_from(["yaml", "json", "toml"]))
def test_any_document_is_a_spec_or_one_line(doc: dict[str, Any], kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"job.{kind}"
    path.write_bytes(serialise(doc, kind))
    submit_in_process(path)


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    data=st.one_of(soup.map(lambda text: text.encode(errors="replace")), st.binary(max_size=200)),
    kind=st.sampled_from(["yaml", "json", "toml"]),
)
def test_any_bytes_are_a_spec_or_one_line(data: bytes, kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"job.{kind}"
    path.write_bytes(data)
    submit_in_process(path)


def test_a_spec_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    """The cap refuses what is over it, not a spec that fills it: padding in a comment."""
    head = b'engine: process\ncommand: ["\\0"]\n#'
    path = tmp_path / "full.yaml"
    path.write_bytes(head + b"x" * (MAX_SPEC_BYTES - len(head) - 1) + b"\n")
    result = CliRunner().invoke(app, ["--nats-url", NOWHERE, "job", "submit", "-f", str(path)])
    assert one_line(result.stderr) == (
        f"Error: {path}:2: command.0: contains a control character (\\x00)"
    )
