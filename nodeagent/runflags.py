"""The settings `hive-nodeagent run` was given on its command line, kept in the state dir.

`hive-nodeagent register` and `hive-nodeagent id` act on the node a running agent is:
same state dir, same config file, and the same flags, so an operator who started
`hive-nodeagent run --nats-url ... --credentials ... --label zone=eu-1` re-registers that
node, with its labels, by typing `hive-nodeagent register` and nothing more. Only what
was typed is kept (the file and environment are read again, as `run` reads them), and
flags given to `register` itself still win.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("hive.nodeagent")

RUN_FLAGS_FILE = "run-flags.json"


def save_run_flags(state_dir: Path, flags: dict[str, Any]) -> None:
    """Store `flags` (config file, name, NATS url and credentials, labels) atomically.

    Paths are made absolute: `register` may be typed in another directory.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps(given(flags), indent=2, sort_keys=True, default=str) + "\n"
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{RUN_FLAGS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, state_dir / RUN_FLAGS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_run_flags(state_dir: Path) -> dict[str, Any]:
    """The flags the last `run` with this state dir was given; {} when there are none."""
    path = state_dir / RUN_FLAGS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring %s: not a JSON object", path)
        return {}
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on top, nested dicts merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """`flags` without what was not given (None, and sections left empty); paths absolute."""
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if isinstance(value, dict):
            value = given(value) or None
        elif isinstance(value, Path):
            value = str(value.absolute())
        if value is not None:
            out[key] = value
    return out
