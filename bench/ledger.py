"""The node agent's capacity ledger under a burst of admits (issue #15).

A burst of offers on one agent: 2,000 executions admitted one after the other, each
with a process job's spec, on a real file system (a temp dir beside the repository,
not /tmp, which may be a tmpfs where fsync costs nothing). Figure: admits/s of the
journalled `nodeagent.capacity.Ledger`. Baseline, in the same run: the ledger as it was
before, which rewrote the whole file (`json.dump(indent=2)` + fsync + rename) on every
change, rebuilt here in a few lines (2,000 take it about 3 minutes). Target: at least
10,000 admits/s, and the median admit of the last 200 no slower than 1.5 x that of the
first 200 (the cost does not grow with what the ledger holds).

JSON on stdout; exit 0 when the target is met.

    .venv/bin/python bench/ledger.py [--admits 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hivectl.core.jobs import JobSpec  # noqa: E402
from hivectl.core.models import Resources  # noqa: E402
from nodeagent.capacity import Held, Ledger, shortfall  # noqa: E402

TARGET_RATE = 10_000  # admits/s
TARGET_GROWTH = 1.5  # last 200 admits / first 200, per admit
WINDOW = 200
ALLOCATABLE = Resources(cpu=1e6, memory=2**60, disk=2**60, gpu=0)
SPEC = JobSpec(engine="process", command=["true"], env={"MODE": "fast"}).model_dump(mode="json")


class WholeFileLedger:
    """The ledger before the journal: every change rewrote every execution, fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held: dict[str, Held] = {}

    def admit(self, exec_id: str, resources: Resources, **fields: Any) -> str | None:
        locked = Resources()
        for held in self.held.values():  # `locked` summed every entry on every offer
            r = held.resources
            locked = Resources(cpu=locked.cpu + r.cpu, memory=locked.memory + r.memory)
        reason = shortfall(resources, ALLOCATABLE.minus(locked))
        if reason is None:
            self.held[exec_id] = Held(exec_id, fields["job_id"], fields["engine"], resources,
                                      spec=fields["spec"])  # fmt: skip
            self.save()
        return reason

    def save(self) -> None:
        data = {"executions": [h.to_json() for h in self.held.values()]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def burst(admit: Callable[..., str | None], count: int) -> list[float]:
    """Seconds per admit, in order."""
    took = []
    resources = Resources(cpu=0.5, memory=64 * 2**20)
    for n in range(count):
        started = time.perf_counter()
        reason = admit(f"e-{n}", resources, job_id="j-1", engine="process", spec=SPEC)
        took.append(time.perf_counter() - started)
        assert reason is None, reason
    return took


def summary(took: list[float]) -> dict[str, float]:
    # Medians: on a shared machine one descheduling swamps a window's mean.
    first, last = statistics.median(took[:WINDOW]), statistics.median(took[-WINDOW:])
    return {
        "admits_per_s": round(len(took) / sum(took), 1),
        "first_200_median_us": round(first * 1e6, 1),
        "last_200_median_us": round(last * 1e6, 1),
        "growth": round(last / first, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admits", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO, prefix=".bench-ledger-") as tmp:
        new_dir, old_dir = Path(tmp) / "new", Path(tmp) / "old"
        old_dir.mkdir()
        ledger = Ledger.load(new_dir, ALLOCATABLE)
        figure = summary(burst(ledger.admit, args.admits))
        ledger.journal.close()
        del ledger
        baseline = summary(burst(WholeFileLedger(old_dir / "executions.json").admit, args.admits))
    ok = figure["admits_per_s"] >= TARGET_RATE and figure["growth"] <= TARGET_GROWTH
    result = {
        "benchmark": "ledger",
        "admits": args.admits,
        "figure": figure,
        "baseline": baseline,
        "ratio": round(figure["admits_per_s"] / baseline["admits_per_s"], 1),
        "target": {"admits_per_s": TARGET_RATE, "growth": TARGET_GROWTH},
        "ok": ok,
    }
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
