"""`hivectl node list -o json` with 10,000 registered nodes: wall time of the CLI process.

Every simulated node registers (signed), then sends one heartbeat and one resource
report, so each row is complete. Then `hivectl --nats-url URL node list -o json` runs
as a subprocess 5 times (target: under 1 s each; the first finds the requester's page
cache cold). Baselines from the same run: the process wall time of importing what
`hivectl node list` imports (the import cost floor), `hivectl --version`, and fetching
every page of hive.api.node.list in-process, one after another (the requester's side
plus the wire and decoding, without the CLI's start-up and output).

JSON on stdout; progress on stderr; exit 0 when the target is met.

    .venv/bin/python bench/nodelist.py [--nodes 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sim
from _sim import BIN, PYTHON, Stack, log

TARGET_S = 1.0


def timed(cmd: list[str], env: dict[str, str], timeout: float = 60) -> tuple[float, Any]:
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout, check=False)
    return time.perf_counter() - t, done


def wall_times(cmd: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        seconds, done = timed(cmd, env)
        if done.returncode != 0:
            return {"error": done.stderr.decode(errors="replace")[-500:], "rc": done.returncode}
        times.append(seconds)
    return {
        "runs": runs,
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
        "all_s": [round(t, 3) for t in times],
    }


async def fetch_all_pages(url: str) -> tuple[float, int, int]:
    """Every page of hive.api.node.list, decoded as the CLI would: (seconds, rows, pages)."""
    import nats

    from hivectl.core import bus
    from hivectl.core.api import NodeListReply, NodeListRequest

    nc = await nats.connect(url, name="bench-nodelist")
    t = time.perf_counter()
    rows = pages = 0
    after = ""
    while True:
        reply = await bus.request(
            nc, "hive.api.node.list", NodeListRequest(after=after), NodeListReply, timeout=30
        )
        rows += len(reply.nodes)
        pages += 1
        if not reply.next:
            break
        after = reply.next
    seconds = time.perf_counter() - t
    await nc.close()
    return seconds, rows, pages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    started = time.monotonic()
    host = _sim.host_info()

    with Stack("nodelist") as stack:
        stack.start_nats().start_requester()
        log(f"registering {args.nodes:,} nodes (each then sends a heartbeat and resources)")
        reg = _sim.register(stack.url, args.nodes, procs=2, in_flight=200, report=True)
        keys: list[_sim.NodeKey | None] = list(reg.pop("keys"))
        log(f"  {reg['registered']:,} registered in {reg['elapsed_s']}s")
        # A live cluster: every node keeps beating at the default 15 s interval while
        # we measure, so no row goes UNHEALTHY/UNKNOWN (and no burst of 10,000 health
        # events lands in the middle of a timing) 30 s after the first heartbeat.
        beats = _sim.Worker(
            _sim.send_heartbeats, stack.url, keys, len(keys) / 15.0, 900.0, name="beats"
        )
        try:
            beats.wait_ready()
            beats.go()
            measured = measure(stack, reg, args)
        finally:
            beats.stop()
        alive = stack.requester_alive()
    return report(reg, args, measured, alive, started, host)


def measure(stack: Stack, reg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    wait_for_reports(stack, reg["registered"])
    env = _sim.clean_env()
    hivectl = str(BIN / "hivectl")
    config = ["--config", str(stack.empty_config)]
    list_cmd = [hivectl, *config, "--nats-url", stack.url, "node", "list", "-o", "json"]

    # The CLI first: its first run finds the requester's page cache cold, as the
    # first `node list` after a requester restart does.
    log(f"timing: {' '.join(list_cmd[:1] + list_cmd[3:])} x{args.runs}")
    measured = time_cli(list_cmd, env, args.runs)

    log("baselines: hivectl's imports for `node list`, hivectl --version, in-process fetch")
    measured["import_floor"] = wall_times([PYTHON, "-c", IMPORT_NODE_LIST], env, args.runs)
    measured["version"] = wall_times([hivectl, *config, "--version"], env, args.runs)
    fetches = [asyncio.run(fetch_all_pages(stack.url)) for _ in range(args.runs)]
    measured["fetch"] = {
        "median_s": round(statistics.median(f[0] for f in fetches), 3),
        "max_s": round(max(f[0] for f in fetches), 3),
        "rows": fetches[0][1],
        "pages": fetches[0][2],
    }
    return measured


# What `hivectl node list` imports before it runs (the other nouns are not imported).
IMPORT_NODE_LIST = "from hivectl.cli import main; main.mount(['node'])"


def wait_for_reports(stack: Stack, registered: int) -> None:
    """Until every node's first heartbeat and resource report are counted."""
    deadline = time.monotonic() + 120
    while True:
        m = stack.scrape()
        if m.heartbeats >= registered and m.resources >= registered:
            return
        if time.monotonic() > deadline:
            log(f"  only {m.heartbeats} heartbeats / {m.resources} reports counted")
            return
        time.sleep(0.2)


def time_cli(list_cmd: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    times: list[float] = []
    problems: list[str] = []
    rows = with_resources = healthy = -1
    out_bytes = 0
    for _ in range(runs):
        seconds, done = timed(list_cmd, env)
        times.append(seconds)
        if done.returncode != 0:
            problems.append(f"rc {done.returncode}: {done.stderr.decode()[-300:]}")
            continue
        try:
            data = json.loads(done.stdout)
        except ValueError as exc:
            problems.append(f"output is not JSON: {exc}")
            continue
        out_bytes = len(done.stdout)
        rows = len(data)
        with_resources = sum(1 for row in data if isinstance(row, dict) and row.get("resources"))
        healthy = sum(1 for row in data if isinstance(row, dict) and row.get("health") == "HEALTHY")
    return {
        "times": times,
        "problems": problems,
        "rows": rows,
        "with_resources": with_resources,
        "healthy": healthy,
        "out_bytes": out_bytes,
    }


def report(
    reg: dict[str, Any],
    args: argparse.Namespace,
    measured: dict[str, Any],
    alive: bool,
    started: float,
    host: dict[str, Any],
) -> int:
    times, problems, rows = measured["times"], measured["problems"], measured["rows"]

    expected = args.nodes + 1  # the requester lists itself
    median = statistics.median(times)
    checks = {
        "cli_ran_and_printed_json": not problems,
        "rows_match": rows == expected,
        "max_under_target": max(times) < TARGET_S,
        "all_registered": reg["failed"] == 0,
        "requester_alive": alive,
    }
    result = {
        "bench": "nodelist",
        "figure": f"hivectl node list -o json wall time with {args.nodes:,} nodes (s)",
        "value": round(median, 3),
        "max_s": round(max(times), 3),
        "all_s": [round(t, 3) for t in times],
        "first_run_cold_cache_s": round(times[0], 3),
        "target": f"< {TARGET_S:g} s (every run)",
        "baseline": {
            "python_import_for_node_list": measured["import_floor"],
            "hivectl_version": measured["version"],
            "in_process_fetch_all_pages": measured["fetch"],
        },
        "pass": all(checks.values()),
        "checks": checks,
        "rows": rows,
        "rows_expected": expected,
        "rows_with_resources": measured["with_resources"],
        "rows_healthy": measured["healthy"],
        "json_bytes": measured["out_bytes"],
        "problems": problems[:3],
        "registration": reg,
        "host_at_start": host,
        "loadavg_at_end": _sim.host_info()["loadavg_1_5_15"],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
