"""Node identity: node id from config or hostname, the identity file, the sentinel."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from hivectl.core.auth import Identity
from hivectl.core.models import ID_PATTERN
from nodeagent.identity import (
    SENTINEL_FILE,
    Sentinel,
    load_identity,
    read_sentinel,
    resolve_node_id,
    sanitise_node_id,
    write_sentinel,
)

KEY = Identity.generate().public_key


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("worker-1", "worker-1"),
        ("Worker-1.example.com", "worker-1"),
        ("GPU_Box_7", "gpu_box_7"),
        ("my host", "my-host"),
        ("--edge", "edge"),
        ("_x", "x"),
        ("bäcker", "b-cker"),
        ("ÄÖÜ9", "9"),
        ("a" * 100, "a" * 63),
    ],
)
def test_sanitise_hostname(hostname: str, expected: str) -> None:
    assert sanitise_node_id(hostname) == expected
    assert re.match(ID_PATTERN, expected)


@pytest.mark.parametrize("hostname", ["", ".", "---", "ÄÖÜ", ".example.com", "   "])
def test_sanitise_leaves_nothing(hostname: str) -> None:
    assert sanitise_node_id(hostname) == ""


def test_unusable_hostname_falls_back_to_the_key() -> None:
    node_id = resolve_node_id(None, KEY, hostname="---")
    assert node_id == "node-" + KEY[:8].lower()
    assert re.match(ID_PATTERN, node_id)


def test_configured_name_wins() -> None:
    assert resolve_node_id("node-1", KEY, hostname="other") == "node-1"


def test_hostname_when_no_name() -> None:
    assert resolve_node_id(None, KEY, hostname="Box.lan") == "box"


def test_default_hostname_gives_a_valid_id() -> None:
    assert re.match(ID_PATTERN, resolve_node_id(None, KEY))


def test_identity_created_once_with_private_mode(tmp_path: Path) -> None:
    first = load_identity(tmp_path / "state")
    seed = tmp_path / "state" / "identity.seed"
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600
    assert load_identity(tmp_path / "state").public_key == first.public_key


def test_sentinel_round_trip(tmp_path: Path) -> None:
    sentinel = Sentinel.now("test", "node-1", KEY, "hive")
    write_sentinel(tmp_path, sentinel)
    assert read_sentinel(tmp_path) == sentinel
    data = json.loads((tmp_path / SENTINEL_FILE).read_text())
    assert {"cluster", "node_id", "requester_key", "registered_at"} <= data.keys()
    assert [p.name for p in tmp_path.iterdir()] == [SENTINEL_FILE]  # no temp file left


def test_sentinel_overwrite_is_atomic_replace(tmp_path: Path) -> None:
    write_sentinel(tmp_path, Sentinel.now("a", "node-1", KEY, "hive"))
    write_sentinel(tmp_path, Sentinel.now("b", "node-1", KEY, "hive"))
    sentinel = read_sentinel(tmp_path)
    assert sentinel is not None and sentinel.cluster == "b"


def test_sentinel_matches_node_and_prefix() -> None:
    sentinel = Sentinel.now("test", "node-1", KEY, "hive")
    assert sentinel.matches("node-1", "hive")
    assert not sentinel.matches("node-2", "hive")
    assert not sentinel.matches("node-1", "other")


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        '{"node_id": "x"}',
        '{"cluster": "c", "node_id": "n", "requester_key": "k", "registered_at": "yesterday"}',
    ],
)
def test_unreadable_sentinel_is_ignored(tmp_path: Path, content: str) -> None:
    (tmp_path / SENTINEL_FILE).write_text(content)
    assert read_sentinel(tmp_path) is None


def test_missing_sentinel(tmp_path: Path) -> None:
    assert read_sentinel(tmp_path) is None
