"""Logging set-up shared by the daemons: one line per event, JSON when not on a terminal.

Fields bound with `extra={"node_id": ...}` (or any of BOUND_FIELDS) appear as their own
keys in JSON and as `key=value` on a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

BOUND_FIELDS = (
    "node_id",
    "job_id",
    "exec_id",
    "subject",
    "reason",
    "code",
    "fingerprint",
    "credentials_dir",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in BOUND_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{name}={getattr(record, name)}"
            for name in BOUND_FIELDS
            if getattr(record, name, None) is not None
        ]
        return f"{line} {' '.join(fields)}" if fields else line


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure the root logger once for a daemon process (stderr)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nats-py logs every reconnect attempt at ERROR; our own callbacks say it once.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
