"""Helpers for bench/batch.py: when each job ended (from the requester's job events),
and the shell loops of `hivectl job submit --no-wait`.

Not a benchmark itself (the leading `_`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _sim
from _sim import BIN, PREFIX

ANSWER_TARGET_S = 1.0  # describe / executions of the big job, as the issue asks
QUIET_S = 3.0  # no job event for this long: ask the requester's job list instead
SHELL_LOOP = """
while read -r id; do
  if out=$("$HIVECTL" --nats-url "$URL" job submit --no-wait --id "$id" --engine process \\
      -- true 2>&1); then
    echo "$id" >> "$SUBMITTED"
  else
    echo "$id" >> "$FAILED"; echo "$out" | tail -1 >> "$ERRORS"
  fi
done < "$IDS"
"""


@functools.cache
def scratch() -> Path:
    """This run's temp dir (spec files, id lists), removed when the benchmark exits."""
    path = Path(tempfile.mkdtemp(prefix="hive-bench-batch-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def workdir(name: str) -> Path:
    path = scratch() / name
    path.mkdir()
    return path


@functools.cache
def empty_config() -> Path:
    """An empty config file for every hivectl and client here: nothing of this machine's
    ~/.config leaks in."""
    path = scratch() / "empty.toml"
    path.write_text("")
    return path


class Finishes:
    """When each job reached COMPLETED, FAILED or STOPPED, by the monotonic clock."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.state: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.swept = 0  # ends found by listing, not by their event

    async def on_event(self, msg: Any) -> None:
        from hivectl.core import codec
        from hivectl.core.jobs import JOB_TERMINAL, JobEvent

        now = time.monotonic()
        try:
            event = codec.decode(msg.data, JobEvent)
        except codec.CodecError:
            return
        if event.new in {s.value for s in JOB_TERMINAL} and event.job_id not in self.at:
            self.at[event.job_id] = now
            self.state[event.job_id] = event.new
            self.changed.set()

    async def sweep(self, nc: Any, missing: set[str]) -> None:
        """Ask the requester which of `missing` have ended (their events were missed)."""
        from hivectl.core import bus
        from hivectl.core.jobs import JOB_TERMINAL, JobListReply, JobListRequest

        now = time.monotonic()
        for state in JOB_TERMINAL:
            after = ""
            while True:
                query = JobListRequest(state=state, after=after)
                page = await bus.request(nc, f"{PREFIX}.api.job.list", query, JobListReply, 30)
                for job in page.jobs:
                    if job.job_id in missing and job.job_id not in self.at:
                        self.at[job.job_id], self.state[job.job_id] = now, state.value
                        self.swept += 1
                if not page.next:
                    break
                after = page.next


async def connect_watching(url: str, name: str) -> tuple[Any, Finishes]:
    """A connection already subscribed to every job's events."""
    nc, _ = await _sim._connect(url, name)
    finishes = Finishes()
    await nc.subscribe(
        f"{PREFIX}.events.job.>",
        cb=finishes.on_event,
        pending_msgs_limit=1_000_000,
        pending_bytes_limit=256 * 2**20,
    )
    await nc.flush()
    return nc, finishes


async def wait_done(nc: Any, finishes: Finishes, ids: set[str], deadline: float) -> float | None:
    """When the last of `ids` ended; None if some had not by `deadline` (monotonic)."""
    while True:
        missing = ids - finishes.at.keys()
        if not missing:
            return max(finishes.at[i] for i in ids) if ids else time.monotonic()
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        finishes.changed.clear()
        try:
            await asyncio.wait_for(finishes.changed.wait(), min(QUIET_S, left))
        except TimeoutError:
            await finishes.sweep(nc, missing)


async def executions(nc: Any, job_id: str) -> list[Any]:
    """Every execution of the job, page by page (`hive.api.job.executions`)."""
    from hivectl.core import bus
    from hivectl.core.jobs import JobExecutionsReply, JobExecutionsRequest

    found: list[Any] = []
    after = ""
    while True:
        query = JobExecutionsRequest(id=job_id, after=after)
        page = await bus.request(nc, f"{PREFIX}.api.job.executions", query, JobExecutionsReply, 30)
        found += page.executions
        if not page.next:
            return found
        after = page.next


def stages(found: list[Any]) -> dict[str, Any]:
    """Where an execution's time goes, from its record's timestamps (one machine, one
    clock): created -> started (offer, accept, spawn), started -> ended (the command),
    ended -> last update (the end reaching the record); and how many were in flight at
    once (created .. last update), at most."""
    spans: dict[str, list[float]] = {"created_to_started": [], "started_to_ended": []}
    spans["ended_to_recorded"] = []
    edges: list[tuple[float, int]] = []
    for e in found:
        if e.started_at and e.ended_at:
            spans["created_to_started"].append((e.started_at - e.created_at).total_seconds())
            spans["started_to_ended"].append((e.ended_at - e.started_at).total_seconds())
            spans["ended_to_recorded"].append((e.updated_at - e.ended_at).total_seconds())
        edges += [(e.created_at.timestamp(), 1), (e.updated_at.timestamp(), -1)]
    at_once = peak = 0
    for _, step in sorted(edges):
        at_once += step
        peak = max(peak, at_once)
    ms = {
        k: {n: v if n == "n" else round(v * 1000, 1) for n, v in _sim.summary(x).items()}
        for k, x in spans.items()
    }
    return {"ms": ms, "most_in_flight": peak}


def hivectl_times(url: str, argv: list[str], runs: int = 3) -> dict[str, Any]:
    """Wall time of `hivectl --nats-url URL *argv` as a process: median and all, in s."""
    env = _sim.clean_env(HIVE_CONFIG=str(empty_config()))
    times, codes = [], []
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run(
            [str(BIN / "hivectl"), "--nats-url", url, *argv],
            env=env,
            capture_output=True,
            timeout=60,
        )
        times.append(time.perf_counter() - t)
        codes.append(done.returncode)
    return {
        "median_s": round(statistics.median(times), 3),
        "all_s": [round(t, 3) for t in times],
        "exit_codes": codes,
    }


def inspect_times(url: str, job_id: str) -> dict[str, Any]:
    floor = hivectl_times(url, ["--version"])
    describe = hivectl_times(url, ["job", "describe", job_id])
    listing = hivectl_times(
        url, ["job", "executions", job_id, "--state", "COMPLETED", "-o", "json"]
    )
    ok = all(
        t["median_s"] < ANSWER_TARGET_S and set(t["exit_codes"]) == {0} for t in (describe, listing)
    )
    return {
        "figure": "hivectl as a process against the big job, median of 3 (s)",
        "job_describe": describe,
        "job_executions_completed_json": listing,
        "target": f"< {ANSWER_TARGET_S:g} s each, exit 0",
        "baseline_hivectl_version": floor,
        "pass": ok,
    }


async def run_shell(url: str, jobs: int, loops: int, limit: float) -> dict[str, Any]:
    """`jobs` jobs from `loops` shell loops of `hivectl job submit --no-wait --id ID`, the
    ids chosen up front; until every submitted job ended, or `limit` seconds."""
    from hivectl.core.jobs import new_job_id

    work = workdir("shell")
    ids = [new_job_id() for _ in range(jobs)]
    env = _sim.clean_env(HIVE_CONFIG=str(empty_config()), HIVECTL=str(BIN / "hivectl"), URL=url)
    for i in range(loops):
        (work / f"ids-{i}").write_text("".join(f"{j}\n" for j in ids[i::loops]))
    nc, finishes = await connect_watching(url, "bench-batch-shell")
    t0 = time.monotonic()
    procs = [await _loop(env, work, i) for i in range(loops)]
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), limit)
    except TimeoutError:  # the loops that are still submitting stop here, whole groups
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.gather(*(p.wait() for p in procs))
    t_submitted = time.monotonic()
    submitted, failed, errors = await asyncio.to_thread(_outcomes, work)
    _sim.log(f"  {len(submitted)} submitted in {t_submitted - t0:.1f}s; waiting for the ends")
    t_end = await wait_done(nc, finishes, submitted, t0 + limit)
    await nc.close()
    states: dict[str, int] = {}
    for job_id in submitted & finishes.state.keys():
        states[finishes.state[job_id]] = states.get(finishes.state[job_id], 0) + 1
    return {
        "submitted": len(submitted),
        "submit_failures": len(failed),
        "not_sent_in_time": jobs - len(submitted) - len(failed),
        "first_errors": errors[:3],
        "submit_s": round(t_submitted - t0, 3),
        "span_s": None if t_end is None else t_end - t0,
        "job_states": states,
        "not_ended": len(submitted - finishes.at.keys()),
        "ends_found_by_listing": finishes.swept,
    }


async def run_file(url: str, jobs: int, limit: float) -> dict[str, Any]:
    """`jobs` jobs in one spec file (a list), `hivectl job submit -f FILE`, waiting as a
    user would; until hivectl exits and every job it printed ended, or `limit` s."""
    work = workdir("file")
    specs = [{"name": f"bench-{i}", "engine": "process", "command": ["true"]} for i in range(jobs)]
    (work / "jobs.yaml").write_text(json.dumps(specs))  # a JSON list is a YAML list
    argv = [str(BIN / "hivectl"), "--nats-url", url, "job", "submit", "-f", str(work / "jobs.yaml")]
    env = _sim.clean_env(HIVE_CONFIG=str(empty_config()))
    nc, finishes = await connect_watching(url, "bench-batch-file")
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    t_exit = time.monotonic() - t0
    ids = set(out.decode().split())
    t_end = await wait_done(nc, finishes, ids, t0 + limit)
    await nc.close()
    states: dict[str, int] = {}
    for job_id in ids & finishes.state.keys():
        states[finishes.state[job_id]] = states.get(finishes.state[job_id], 0) + 1
    return {
        "submitted": len(ids),
        "hivectl_exit": proc.returncode,
        "hivectl_s": round(t_exit, 3),
        "hivectl_last_line": (err.decode(errors="replace").strip().splitlines() or [""])[-1],
        "span_s": None if t_end is None or len(ids) < jobs else max(t_end - t0, t_exit),
        "job_states": states,
    }


async def _loop(env: dict[str, str], work: Path, i: int) -> asyncio.subprocess.Process:
    """Shell loop `i`: submits the ids of ids-<i>, one hivectl after another."""
    files = {"IDS": f"ids-{i}", "ERRORS": f"errors-{i}", "FAILED": "failed"}
    files["SUBMITTED"] = "submitted"
    return await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        SHELL_LOOP,
        stdin=asyncio.subprocess.DEVNULL,
        env=env | {name: str(work / file) for name, file in files.items()},
        start_new_session=True,  # its own group, so a loop past the limit goes whole
    )


def _outcomes(work: Path) -> tuple[set[str], set[str], list[str]]:
    """The ids submitted, those whose submit failed, and hivectl's last line for each."""

    def ids(name: str) -> set[str]:
        path = work / name
        return set(path.read_text().split()) if path.exists() else set()

    errors = [line for f in sorted(work.glob("errors-*")) for line in f.read_text().splitlines()]
    return ids("submitted"), ids("failed"), errors


if __name__ == "__main__":
    print("bench/_batchrun.py is a helper module for bench/batch.py.", file=sys.stderr)
    sys.exit(0)
