"""What a container used, from the engine's stats stream while it runs.

Docker keeps a container's CPU account in its cgroup, which goes when the container
stops: stats asked for after the end say nothing. So a thread of the container's own
reads the stats stream (a sample about every second) for as long as the container runs
and keeps the last CPU total and the largest memory use seen. The figure is a lower
bound: what the container used after the last sample (at most a second of it) is not
counted, and a container that ends before its first sample reports nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from hivectl.core.jobs import Measured

log = logging.getLogger("hive.nodeagent")


class StatsSampler:
    """Samples one container's stats in a thread until its stream ends."""

    def __init__(self, client: Any, container_id: str, name: str) -> None:
        self._client = client
        self._container_id = container_id
        self.cpu_ns = 0  # the container's CPU total at the last sample
        self.peak_memory = 0  # bytes, the most seen
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            stream = self._client.api.stats(self._container_id, stream=True, decode=True)
            for sample in stream:
                self._take(sample)
        except Exception as exc:  # the engine went away: what was sampled stands
            log.debug("stats of %s ended: %s", self._container_id[:12], exc)

    def _take(self, sample: dict[str, Any]) -> None:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            usage = (sample.get("cpu_stats") or {}).get("cpu_usage") or {}
            total = int(usage.get("total_usage") or 0)
            memory = sample.get("memory_stats") or {}
            used = int(memory.get("max_usage") or memory.get("usage") or 0)
            if total > 0:  # a stopped container's last sample is all zeros
                self.cpu_ns = max(self.cpu_ns, total)
                self.samples += 1
            self.peak_memory = max(self.peak_memory, used)

    def finish(self) -> Measured | None:
        """Once the container has ended: what it used as last sampled, or None when
        nothing was. Not waiting for the stream's end: the engine may hold it open a
        while after the container stops, and the job's end would wait with it. The
        thread ends with the stream (at the latest when the container is removed)."""
        if not self.samples:
            return None
        return Measured(cpu_seconds=self.cpu_ns / 1e9, peak_memory=self.peak_memory or None)
