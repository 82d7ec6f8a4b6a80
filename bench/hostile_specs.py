"""`hivectl job submit -f FILE` with hostile spec files: wall time and peak memory.

Each file of tests/support/hostile_specs.py (deep nesting, 50 MB, NUL and control
characters, a billion laughs, bytes that are not UTF-8) is handed to a real `hivectl`
process, which must refuse it in one line; so is the largest file the limits let
through whole (100,000 values in 300 KB), the slowest to refuse. Target: every one
within 2 s, one line, exit 1, and a peak RSS within 64 MiB of the baseline's (before
the limits, the 50 MB file took 75 s and 823 MiB). Baseline from the same run: a small
valid spec, which hivectl reads, checks and then fails to send (nothing listens at the
NATS URL): the CLI's own start-up and spec handling.

JSON on stdout; exit 0 when the target is met.

    .venv/bin/python bench/hostile_specs.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.hostile_specs import EDGE_SPECS, HOSTILE_SPECS  # noqa: E402

PEAKRSS = REPO / "tests" / "support" / "peakrss.py"
TARGET_S = 2.0
TARGET_EXTRA_RSS = 64 * 1024 * 1024
NOWHERE = "nats://127.0.0.1:1"
VALID = b'engine: process\ncommand: [sh, -c, "echo hello"]\nenv: {MODE: fast}\n'


def hivectl(path: Path) -> list[str]:
    return [sys.executable, "-m", "hivectl.cli.main", "--nats-url", NOWHERE,
            "job", "submit", "-f", str(path)]  # fmt: skip


def timed(path: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    started = time.perf_counter()
    done = subprocess.run(hivectl(path), env=env, capture_output=True, timeout=120, check=False)
    return time.perf_counter() - started, done


def peak_rss(path: Path, env: dict[str, str], out: Path) -> int:
    """hivectl's peak RSS in bytes, read by tests/support/peakrss.py: a small parent,
    so the figure is hivectl's own (a child's ru_maxrss starts from its parent's RSS
    at fork, and this process held a 50 MB file a moment ago)."""
    wrapper = [sys.executable, str(PEAKRSS), str(out), *hivectl(path)]
    subprocess.run(wrapper, env=env, capture_output=True, timeout=120, check=False)
    return int(out.read_text())


def measure(path: Path, env: dict[str, str], runs: int) -> dict[str, Any]:
    times, done = [], None
    for _ in range(runs):
        seconds, done = timed(path, env)
        times.append(seconds)
    assert done is not None
    stderr = done.stderr.decode(errors="replace")
    return {
        "bytes": path.stat().st_size,
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
        "peak_rss_mib": round(peak_rss(path, env, path.with_suffix(".rss")) / 2**20, 1),
        "exit": done.returncode,
        "stderr_lines": len(stderr.splitlines()),
        "said": stderr.strip()[-160:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "empty.toml").write_text("")
        env["HIVE_CONFIG"] = str(Path(tmp) / "empty.toml")
        valid = Path(tmp) / "valid.yaml"
        valid.write_bytes(VALID)
        baseline = measure(valid, env, args.runs)
        files: dict[str, Any] = {}
        for hostile in [*HOSTILE_SPECS, *EDGE_SPECS]:
            path = Path(tmp) / hostile.name
            path.write_bytes(hostile.make())
            files[hostile.name] = measure(path, env, args.runs)
            path.unlink()
    limit_rss = baseline["peak_rss_mib"] + TARGET_EXTRA_RSS / 2**20
    met = all(
        f["max_s"] < TARGET_S and f["peak_rss_mib"] <= limit_rss
        and f["exit"] == 1 and f["stderr_lines"] == 1
        for f in files.values()
    )  # fmt: skip
    report = {
        "figure": "hivectl job submit -f <hostile file>: wall time and peak RSS",
        "target": f"each < {TARGET_S}s, one line, exit 1, peak RSS <= baseline + 64 MiB",
        "baseline_valid_spec": baseline,
        "hostile": files,
        "slowest_s": max(f["max_s"] for f in files.values()),
        "largest_rss_mib": max(f["peak_rss_mib"] for f in files.values()),
        "met": met,
    }
    print(json.dumps(report, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
