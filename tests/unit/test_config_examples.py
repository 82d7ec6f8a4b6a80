"""The example files in configs/ list every key with its default, and stay loadable."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from hivectl.core.config import (
    ClientConfig,
    HiveSettings,
    NodeAgentConfig,
    RequesterConfig,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXAMPLES = [
    (RequesterConfig, "requester.toml"),
    (NodeAgentConfig, "nodeagent.toml"),
    (ClientConfig, "hivectl.toml"),
]


@pytest.fixture(autouse=True)
def no_hive_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HIVE_"):
            monkeypatch.delenv(name)


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def documented_keys(text: str) -> set[str]:
    """Keys set or shown commented-out (`# key = ...`), qualified by their [table]."""
    keys, table = set(), ""
    for line in text.splitlines():
        if match := re.match(r"^\[([a-z_.]+)\]$", line.strip()):
            table = match[1] + "."
        elif match := re.match(r"^#?\s*([a-z_]+)\s*=", line):
            keys.add(table + match[1])
    return keys


@pytest.mark.parametrize(("cls", "name"), EXAMPLES)
def test_example_lists_every_key(cls: type[HiveSettings], name: str) -> None:
    missing = set(leaf_keys(cls)) - documented_keys((CONFIGS / name).read_text())
    assert not missing, f"{name} does not mention {sorted(missing)}"


@pytest.mark.parametrize(("cls", "name"), EXAMPLES)
def test_example_values_are_the_defaults(cls: type[HiveSettings], name: str) -> None:
    from_file = load_config(cls, CONFIGS / name).model_dump()
    defaults = cls().model_dump()
    assert from_file == defaults
