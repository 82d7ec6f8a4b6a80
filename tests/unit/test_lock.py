"""requirements.lock and pyproject.toml agree, and the repo's venv holds what is locked.

`make install` installs the lock alone (hash-checked), never pyproject's ranges, so a
dependency added to pyproject.toml without `make lock` would be missing on a fresh
machine, and one removed would still be installed: these tests say which.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
DECLARED_HERE = "hive (pyproject.toml"  # uv's `# via` for a pin that pyproject asks for


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: tuple[str, ...]
    wanted_by: tuple[str, ...]

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> Version | None:
        specs = list(self.requirement.specifier)
        exact = len(specs) == 1 and specs[0].operator == "=="
        return Version(specs[0].version) if exact else None

    def applies_here(self) -> bool:
        return self.requirement.marker is None or self.requirement.marker.evaluate()


def read_lock(text: str) -> list[Pin]:
    """Entries of a requirements file as uv writes it: a pin, its hashes, `# via` lines."""
    pins = []
    for block in re.split(r"\n(?=\S)", text):
        if not block.strip() or block.startswith(("#", "-")):
            continue
        lines = [line.strip() for line in block.splitlines()]
        code = " ".join(line.rstrip("\\") for line in lines if not line.startswith("#"))
        notes = [line.lstrip("#").strip() for line in lines if line.startswith("#")]
        spec, _, _ = code.partition(" --hash=")
        pins.append(
            Pin(
                requirement=Requirement(spec.strip()),
                hashes=tuple(re.findall(r"--hash=(\S+)", code)),
                wanted_by=tuple(n.removeprefix("via").strip() for n in notes if n != "via"),
            )
        )
    return pins


def declared(project: dict[str, Any]) -> list[Requirement]:
    """Every requirement pyproject.toml names: runtime, dev, tooling, build backend."""
    texts = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["dev"],
        *project["dependency-groups"]["tooling"],
        *project["build-system"]["requires"],
    ]
    return [Requirement(text) for text in texts]


def drift(project: dict[str, Any], pins: list[Pin]) -> list[str]:
    """What a fresh `make install` would get wrong, one line each; empty when in step."""
    problems = [f"{p.requirement} is not pinned with ==" for p in pins if p.version is None]
    problems += [f"{p.name} has no hashes" for p in pins if not p.hashes]
    wanted = declared(project)
    for requirement in wanted:
        locked = [p for p in pins if p.name == canonicalize_name(requirement.name)]
        if not locked:
            problems.append(f"{requirement} is not in the lock")
        for pin in locked:
            if pin.version is not None and pin.version not in requirement.specifier:
                problems.append(f"{requirement} but the lock has {pin.requirement}")
    names = {canonicalize_name(r.name) for r in wanted}
    problems += [
        f"{p.name} is locked for pyproject.toml, which no longer names it"
        for p in pins
        if p.name not in names and any(w.startswith(DECLARED_HERE) for w in p.wanted_by)
    ]
    return problems


@pytest.fixture(scope="module")
def pins() -> list[Pin]:
    return read_lock(LOCK.read_text())


def test_the_lock_pins_everything_pyproject_names_with_hashes(pins: list[Pin]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert len(pins) > len(declared(project))
    assert drift(project, pins) == [], "run `make lock`"


def test_each_kind_of_drift_is_named() -> None:
    project = {
        "project": {
            "dependencies": ["typer>=0.12", "rich>=13"],
            "optional-dependencies": {"dev": ["pytest>=8"]},
        },
        "dependency-groups": {"tooling": ["uv>=0.5"]},
        "build-system": {"requires": ["setuptools>=68"]},
    }
    lock = (
        "# made by hand\n"
        "typer==0.11 \\\n    --hash=sha256:aa\n    # via hive (pyproject.toml)\n"
        "pytest==9.2.0 ; sys_platform == 'linux' \\\n    --hash=sha256:bb \\\n"
        "    --hash=sha256:cc\n    # via\n    #   hive (pyproject.toml)\n    #   other\n"
        "uv>=0.5 \\\n    --hash=sha256:dd\n    # via hive (pyproject.toml:tooling)\n"
        "setuptools==84.2.1\n    # via hive (pyproject.toml:tooling)\n"
        "docker==7.2.0 \\\n    --hash=sha256:ee\n    # via hive (pyproject.toml)\n"
        "pluggy==1.7.0 \\\n    --hash=sha256:ff\n    # via pytest\n"
    )
    assert drift(project, read_lock(lock)) == [
        "uv>=0.5 is not pinned with ==",
        "setuptools has no hashes",
        "typer>=0.12 but the lock has typer==0.11",
        "rich>=13 is not in the lock",
        "docker is locked for pyproject.toml, which no longer names it",
    ]


def test_the_venv_has_exactly_the_locked_versions(pins: list[Pin]) -> None:
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"not running from {ROOT / '.venv'} (sys.prefix is {sys.prefix})")
    wrong = []
    for pin in filter(Pin.applies_here, pins):
        try:
            installed: str | None = metadata.version(pin.name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or Version(installed) != pin.version:
            wrong.append(f"{pin.name} {installed or 'missing'} (locked {pin.version})")
    assert not wrong, "run `make install`: " + "; ".join(wrong)
