"""The README's commands, read out of README.md, so tests run them as written."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def section(title: str) -> str:
    """The text of the README section headed `title` (up to the next heading of its level)."""
    text = README.read_text()
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.MULTILINE)
    if match is None:
        raise AssertionError(f"README.md has no section {title!r}")
    level = len(match[1])
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def blocks(title: str) -> list[str]:
    """The shell blocks of a section, as written (a shell runs them as scripts)."""
    return [body for lang, body in _FENCE.findall(section(title)) if lang in ("sh", "")]


def commands(title: str, block: int = 0) -> list[str]:
    """The commands of the `block`-th shell block of a section, comments stripped."""
    return lines(blocks(title)[block])


def lines(block: str) -> list[str]:
    """A shell block's commands, one a line, comments stripped."""
    stripped = (line.split(" #", 1)[0].strip() for line in block.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def inline_commands(title: str, program: str) -> list[str]:
    """The `code spans` of a section's prose that run `program` (e.g. `.venv/bin/hivectl`)."""
    spans = re.findall(r"`([^`\n]+)`", _FENCE.sub("", section(title)))
    return [span for span in spans if span.split(" ", 1)[0] == program]


def checkout(dest: Path) -> Path:
    """The repository as a fresh clone of this working tree would have it.

    Tracked files plus new ones not yet committed (but not ignored ones: no .venv, no
    caches), so the test runs the code under test, not the last commit.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def code(title: str, lang: str) -> list[str]:
    """The `lang` blocks (```python, say) of a section, as written."""
    return [body for found, body in _FENCE.findall(section(title)) if found == lang]
