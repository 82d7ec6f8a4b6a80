"""Dropping what nodes send: counted by reason, logged at most once a minute per node.

A node that keeps sending garbage must not flood the log, yet the operator must hear of
it once, and the counters (exported as metrics) must see every drop.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from hivectl.core.subjects import Subjects

LOG_EVERY = 60.0


class Dropped(Exception):
    """A node message refused before it touched state; `code` is the counter's reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Drops:
    def __init__(self, subjects: Subjects, log: logging.Logger, what: str) -> None:
        self._subjects = subjects
        self._log = log
        self._what = what
        self._logged: dict[tuple[str, str], float] = {}
        self.counts: Counter[str] = Counter()

    def record(self, subject: str, drop: Dropped) -> None:
        self.counts[drop.code] += 1
        node_id = self._subjects.node_id_from(subject) or subject[:80]
        now, key = time.monotonic(), (node_id, drop.code)
        if now - self._logged.get(key, -LOG_EVERY) < LOG_EVERY:
            return
        # Forget marks older than the window whenever one is written, so a stream of
        # ever-new bogus ids cannot grow this without bound.
        self._logged = {k: t for k, t in self._logged.items() if now - t < LOG_EVERY}
        self._logged[key] = now
        self._log.warning(
            "dropped %s on %s: %s",
            self._what,
            subject[:120],
            drop.reason,
            extra={"node_id": node_id, "code": drop.code},
        )
