"""`hivectl` start-up: wall time of `--version`, `node list` and `job list` as processes.

A 3-node devstack (`hivectl devstack --dir D --port 0`, process executor) is started as
a process with its own XDG_CONFIG_HOME, so the client context it writes is the config
file every timed `hivectl` reads (as a user's ~/.config/hive/hivectl.toml would be);
three jobs are run so `job list` has rows. Then RUNS times each, in interleaved rounds
so that load from elsewhere falls on every figure alike:

    hivectl --version          target < 100 ms
    hivectl node list          target < 250 ms   (stdout a pipe: plain columns)
    hivectl job list           target < 250 ms
    hivectl node list  (tty)   target < 250 ms   (a pseudo-terminal, COLUMNS=80)

and as the floor, in the same rounds, `python -c pass` and `python -c "import nats,
msgpack"` (what any NATS client in Python pays before it does anything).

Each runs under two conditions, each with its own PYTHONPYCACHEPREFIX that a warm-up
run fills with bytecode:

    cached      bytecode cached for every module, Hive's too: a user's machine after
                the first run (PYTHONDONTWRITEBYTECODE unset), or a wheel install.
    hive_cold   the same less Hive's own modules, with PYTHONDONTWRITEBYTECODE=1: an
                editable install where that is set (as in this sandbox), where Hive's
                sources are compiled again on every run.

The targets apply to `cached`; `hive_cold` shows what compiling costs. `--hivectl`
measures another build (a wrapper script running an older tree, say) the same way;
`--compare PATH` times a second build in the same rounds, against the same stack, for
a before/after under the same load. JSON on stdout, progress on stderr; exit 0 when
every target is met.

    .venv/bin/python bench/cli.py [--runs 20] [--hivectl PATH] [--compare PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sim
from _sim import BIN, PYTHON, log

TARGETS_MS = {
    "hivectl --version": 100.0,
    "hivectl node list": 250.0,
    "hivectl job list": 250.0,
    "hivectl node list (tty)": 250.0,
}
FLOORS: dict[str, list[str]] = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "python -c 'import nats, msgpack'": [PYTHON, "-c", "import nats, msgpack"],
}
CONDITIONS = ("cached", "hive_cold")
COMPARED = "compare: "  # names of the figures of the --compare build
NODES, JOBS = 3, 3
RUN_TIMEOUT = 60.0  # seconds before a hung run is killed
Outputs = dict[tuple[str, str], tuple[int, bytes]]


def figures(hivectl: str, label: str = "") -> dict[str, list[str]]:
    """Each timed figure's command line (names prefixed with `label`)."""
    args = {
        "hivectl --version": ["--version"],
        "hivectl node list": ["node", "list"],
        "hivectl job list": ["job", "list"],
        "hivectl node list (tty)": ["node", "list"],
    }
    return {label + name: [hivectl, *argv] for name, argv in args.items()}


class DevStack:
    """`hivectl devstack` as a process, and the environment that reaches it."""

    def __init__(self, base: Path, hivectl: str) -> None:
        self.base = base
        self.hivectl = hivectl
        self.env = _sim.clean_env(XDG_CONFIG_HOME=str(base / "xdg"), COLUMNS="80")
        self.context = base / "xdg" / "hive" / "hivectl.toml"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        argv = [self.hivectl, "devstack", "--dir", str(self.base / "stack"), "--port", "0"]
        with (self.base / "devstack.log").open("wb") as out:
            self.proc = subprocess.Popen(
                [*argv, "--computes", str(NODES)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + timeout
        while not self.context.exists():  # written once every agent is HEALTHY
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.base / "devstack.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"devstack did not come up:\n{tail}")
            time.sleep(0.1)
        log(f"devstack up: {NODES} nodes; context {self.context}")

    def run_jobs(self) -> None:
        for i in range(JOBS):
            argv = [self.hivectl, "job", "submit", "--engine", "process", "--name", f"bench-{i}"]
            done = subprocess.run(
                [*argv, "--", "echo", "hello"], env=self.env, capture_output=True, timeout=60
            )
            if done.returncode != 0:
                raise RuntimeError(f"job submit failed: {done.stderr.decode()[-500:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # it stops the agents, the requester, NATS
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def condition_env(base: dict[str, str], cache: Path, cold: bool) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    if cold:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_once(name: str, argv: list[str], env: dict[str, str]) -> tuple[float, int, bytes]:
    """(seconds, exit status, output) of one run; `(tty)` figures get a pseudo-terminal
    for stdout and stderr. Output is stdout, or stderr when the run failed.

    No timeout is passed to subprocess: with one, it polls for the exit in sleeps of up
    to 50 ms, which would land in the figures. A watchdog kills a run that hangs."""
    tty = "(tty)" in name
    master, slave = pty.openpty() if tty else (-1, -1)
    out = slave if tty else subprocess.PIPE
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    watchdog = threading.Timer(RUN_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        stdout, stderr = proc.communicate()
    finally:
        watchdog.cancel()
    seconds = time.perf_counter() - t
    if tty:
        os.set_blocking(master, False)
        stdout = _drain(master)
        os.close(master)
        os.close(slave)
    return seconds, proc.returncode, stdout if proc.returncode == 0 or tty else stderr


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # BlockingIOError: all read
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def warm_up(commands: dict[str, list[str]], envs: dict[str, dict[str, str]]) -> None:
    """Fill each condition's bytecode cache, then empty `hive_cold`'s of Hive's modules."""
    for cond, env in envs.items():
        writing = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        for name, argv in commands.items():
            run_once(name, argv, writing)
        if cond == "hive_cold":
            drop_project_bytecode(Path(env["PYTHONPYCACHEPREFIX"]))


def drop_project_bytecode(cache: Path) -> None:
    """Delete the cached bytecode of every module outside the standard library and
    site-packages: Hive's own, wherever its sources are."""
    paths = sysconfig.get_paths()
    roots = [Path(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    kept = {str(p) for p in roots} | {str(p.resolve()) for p in roots}
    for pyc in cache.rglob("*.pyc"):
        source_dir = "/" + str(pyc.parent.relative_to(cache))
        if not any(source_dir == root or source_dir.startswith(root + "/") for root in kept):
            pyc.unlink()


def measure(commands: dict[str, list[str]], runs: int, envs: dict[str, dict[str, str]]) -> Any:
    warm_up(commands, envs)
    times: dict[tuple[str, str], list[float]] = {}
    outputs: Outputs = {}
    for round_no in range(runs):
        for cond, env in envs.items():
            for name, argv in commands.items():
                seconds, rc, out = run_once(name, argv, env)
                times.setdefault((cond, name), []).append(seconds)
                if rc != 0 or round_no == 0:
                    outputs[(cond, name)] = (rc, out)
        log(f"round {round_no + 1}/{runs} done")
    return times, outputs


def stats(values: list[float]) -> dict[str, Any]:
    return {
        "median_ms": round(statistics.median(values) * 1000, 1),
        "min_ms": round(min(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
        "all_ms": [round(v * 1000) for v in values],
    }


def checks(outputs: Outputs) -> dict[str, bool]:
    """Every run exited 0, and the lists show what the stack holds."""
    node_rows = outputs[("cached", "hivectl node list")][1].decode().splitlines()
    job_rows = outputs[("cached", "hivectl job list")][1].decode().splitlines()
    tty = outputs[("cached", "hivectl node list (tty)")][1].decode(errors="replace")
    return {
        "every_run_exit_0": all(rc == 0 for rc, _ in outputs.values()),
        "node_list_rows": len(node_rows) == 1 + 1 + NODES,  # header, requester, agents
        "job_list_rows": len(job_rows) == 1 + JOBS,
        "tty_shows_the_nodes": all(f"node-{i}" in tty for i in range(1, NODES + 1)),
    }


def report(times: Any, outputs: Outputs, args: argparse.Namespace, started: float) -> int:
    result: dict[str, Any] = {
        "bench": "cli",
        "figure": f"median wall time of hivectl as a process over {args.runs} runs (ms)",
        "hivectl": args.hivectl,
        "figures": {},
        "baseline": {n: {c: stats(times[(c, n)]) for c in CONDITIONS} for n in FLOORS},
        "conditions": {
            "cached": "bytecode cached for every module (a user's machine after one run)",
            "hive_cold": "Hive's own modules compiled on every run "
            "(PYTHONDONTWRITEBYTECODE=1 with an editable install)",
        },
    }
    for name, target in TARGETS_MS.items():
        by_cond = {cond: stats(times[(cond, name)]) for cond in CONDITIONS}
        passed = by_cond["cached"]["median_ms"] < target
        result["figures"][name] = {**by_cond, "target": f"< {target:g} ms", "pass": passed}
    if args.compare:
        result["compare"] = {
            "hivectl": args.compare,
            "figures": {
                name: {c: stats(times[(c, COMPARED + name)]) for c in CONDITIONS}
                for name in TARGETS_MS
            },
        }
    result["checks"] = check = checks(outputs)
    result["pass"] = all(f["pass"] for f in result["figures"].values()) and all(check.values())
    if not check["every_run_exit_0"]:
        result["failed_output"] = {
            f"{c}: {n}": out.decode(errors="replace")[-300:]
            for (c, n), (rc, out) in outputs.items()
            if rc != 0
        }
    result["host_at_start"] = args.host
    result["loadavg_at_end"] = _sim.host_info()["loadavg_1_5_15"]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--hivectl", default=str(BIN / "hivectl"), help="the hivectl to time")
    parser.add_argument("--compare", help="another hivectl to time in the same rounds")
    args = parser.parse_args()
    started, args.host = time.monotonic(), _sim.host_info()
    base = Path(tempfile.mkdtemp(prefix="hive-bench-cli-"))
    stack = DevStack(base, args.hivectl)
    try:
        stack.start()
        stack.run_jobs()
        envs = {
            cond: condition_env(stack.env, base / f"pycache-{cond}", cond == "hive_cold")
            for cond in CONDITIONS
        }
        commands = figures(args.hivectl) | FLOORS
        if args.compare:
            commands |= figures(args.compare, COMPARED)
        times, outputs = measure(commands, args.runs, envs)
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)
    return report(times, outputs, args, started)


if __name__ == "__main__":
    sys.exit(main())
