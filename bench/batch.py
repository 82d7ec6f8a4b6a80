"""Big batches and many jobs (issue #15): one job of `--count N`, and N jobs of one
execution each, on real process agents, from submit until every execution COMPLETED.

Each part starts its own nats-server, `hive-requester run --auto-approve` and two real
node agents (`python -m nodeagent run`, process executor), with devstack's health
intervals (`hivectl devstack`: the issue's set-up). Every job runs `true`.

    floors   in the same run: fork+exec+wait of `true` via asyncio.create_subprocess_exec
             (N runs, 16 at a time: what any process executor in Python pays), and NATS
             request/reply to a plain responder on a server of its own (16 in flight).
    count    one job of `--count N` through `hive.api.job.submit`; executions/s from the
             submit until the job's COMPLETED event (target >= 400/s), and where each
             execution's time went (its record's timestamps: created -> started -> ended)
             and how many were in flight at most. Then `hivectl job describe ID` and
             `hivectl job executions ID --state COMPLETED -o json`, median of 3 each
             (target < 1 s; floor `hivectl --version`, same runs).
    client   `--jobs N` jobs through hive.AsyncClient on one connection (submit_many, then
             wait); jobs/s from the first submit until wait returns (target >= 200/s).
             Reported as skipped, and failed, where `import hive` fails.
    file     the same N jobs in one spec file (a list), `hivectl job submit -f FILE` as a
             user runs it, waiting; jobs/s until it exits with every job ended. No target.
    shell    the same N jobs from 8 parallel shell loops of `hivectl job submit --no-wait`
             (ids chosen up front), for comparison; jobs/s until every job's COMPLETED
             event. No target: it shows what a script pays per job without the client.

Ends are read from `hive.events.job.>` (subscribed before anything is sent); when no event
came for 3 s, the requester's job list is asked, so a missed event costs 3 s, not the
result. JSON on stdout, progress on stderr; exit 0 when every target is met.

    .venv/bin/python bench/batch.py                          # everything (several minutes)
    .venv/bin/python bench/batch.py --count 300 --jobs 200   # a quick look
    .venv/bin/python bench/batch.py --part count --count 2000
    .venv/bin/python bench/batch.py --part count --max-executions 64  # agents' limit
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _batchrun
import _jobsim
import _sim
from _batchrun import connect_watching, wait_done
from _sim import PREFIX, CpuMeter, log

EXECS_TARGET = 400.0  # executions/s of one big job
JOBS_TARGET = 200.0  # jobs/s through the client
AGENTS = ("node-1", "node-2")
SHELL_LOOPS = 8
FORK_IN_FLIGHT = 16


# -- the stack ---------------------------------------------------------------------------
@contextmanager
def batch_stack(name: str, agent_extra: dict[str, str]) -> Iterator[_jobsim.JobStack]:
    """nats-server, the requester and two process agents, every one APPROVED and HEALTHY;
    `agent_extra`: more environment for the agents."""
    from jobs import wait_agents  # bench/jobs.py

    from hivectl.cli.devstack import AGENT_ENV, REQUESTER_ENV

    agent_env = {
        "HIVE_EXECUTORS__PROCESS__ENABLED": "true",
        "HIVE_EXECUTORS__DOCKER__ENABLED": "false",
        **AGENT_ENV,
        **agent_extra,
    }
    with _jobsim.JobStack(name, env=dict(REQUESTER_ENV)) as stack:
        stack.start_nats()
        stack.start_requester()
        for agent in AGENTS:
            stack.start_agent(agent, agent_env)
        ready = asyncio.run(wait_agents(stack.url, stack, list(AGENTS), 60))
        log(f"{len(AGENTS)} agents APPROVED and HEALTHY after {ready:.1f}s")
        yield stack


def meters(stack: _jobsim.JobStack) -> dict[str, CpuMeter]:
    pids = {"requester": stack.requester_pid, "nats_server": stack.nats_pid}
    pids |= {name: proc.pid for name, proc in zip(AGENTS, stack.agents, strict=True)}
    return {name: CpuMeter(pid) for name, pid in pids.items()}


def alive(stack: _jobsim.JobStack) -> dict[str, Any]:
    """Whether every process lived through the part; the logs of any that did not."""
    procs = {"requester": stack.requester, **dict(zip(AGENTS, stack.agents, strict=True))}
    dead = {name: p.returncode for name, p in procs.items() if p is None or p.poll() is not None}
    tails = {name: stack.agent_log(name, 15) for name in dead if name != "requester"}
    if "requester" in dead:
        tails["requester"] = stack.requester_log(15)
    return {"all_alive": not dead, "exited": dead, "logs": tails}


# -- floors ------------------------------------------------------------------------------
async def fork_rate(runs: int, in_flight: int) -> dict[str, Any]:
    """`true` via asyncio.create_subprocess_exec, started and waited for, `in_flight` at once."""
    gate = asyncio.Semaphore(in_flight)
    times: list[float] = []

    async def one() -> None:
        async with gate:
            t = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                "true", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
            )
            await proc.wait()
            times.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(runs):
            group.create_task(one())
    elapsed = time.perf_counter() - t0
    return {
        "runs": runs,
        "in_flight": in_flight,
        "rate_per_s": round(runs / elapsed, 1),
        "each_ms": {
            k: v if k == "n" else round(v * 1000, 3) for k, v in _sim.summary(times, 6).items()
        },
    }


def part_floors(args: argparse.Namespace) -> dict[str, Any]:
    fork = asyncio.run(fork_rate(max(args.count, 200), FORK_IN_FLIGHT))
    log(f"floor: fork+exec+wait of `true`, {FORK_IN_FLIGHT} at a time: {fork['rate_per_s']}/s")
    with _sim.Stack("batch-floor") as stack:
        stack.start_nats()
        nats = _jobsim.measure_nats_floor(stack.url, 256, 500, 5_000, 16)
    log(f"floor: NATS request/reply, 16 in flight: {nats['burst']['rate_per_s']:,}/s")
    args.floors = {"fork_per_s": fork["rate_per_s"], "nats_per_s": nats["burst"]["rate_per_s"]}
    return {"pass": True, "fork_exec_wait_true": fork, "nats_request_reply": nats}


def progress(states: dict[str, int], span: float | None, limit: float) -> float:
    """COMPLETED per second until the end (or the limit), whether or not all completed:
    how far a run that failed or ran out of time got."""
    return round(states.get("COMPLETED", 0) / (span or limit), 1)


def ratio(value: float, floor: float | None) -> float | None:
    return round(value / floor, 3) if floor else None


# -- one big job ---------------------------------------------------------------------------
async def run_count(url: str, count: int, limit: float) -> dict[str, Any]:
    from hivectl.core import bus
    from hivectl.core.jobs import (
        JobGetReply,
        JobGetRequest,
        JobSpec,
        JobSubmitReply,
        JobSubmitRequest,
        new_job_id,
    )

    nc, finishes = await connect_watching(url, "bench-batch-count")
    spec = JobSpec(name="bench-batch", engine="process", command=["true"], count=count)
    request = JobSubmitRequest(spec=spec, job_id=new_job_id())
    t0 = time.monotonic()
    reply = await bus.request(nc, f"{PREFIX}.api.job.submit", request, JobSubmitReply, 30)
    t_reply = time.monotonic()
    t_end = await wait_done(nc, finishes, {reply.job_id}, t0 + limit)
    get = JobGetRequest(id=reply.job_id)
    job = (await bus.request(nc, f"{PREFIX}.api.job.get", get, JobGetReply, 30)).job
    found = await _batchrun.executions(nc, reply.job_id)
    await nc.close()
    return {
        "job_id": reply.job_id,
        "t0": t0,
        "submit_reply_s": round(t_reply - t0, 3),
        "span_s": None if t_end is None else t_end - t0,
        "state": job.state.value,
        "executions": {k.value: v for k, v in job.tally().items()},
        "ends_found_by_listing": finishes.swept,
        "execution_stages": _batchrun.stages(found),
    }


def part_count(args: argparse.Namespace) -> dict[str, Any]:
    with batch_stack("batch-count", args.agent_env) as stack:
        meter = meters(stack)
        log(f"count: one job of --count {args.count} running `true`")
        run = asyncio.run(run_count(stack.url, args.count, args.limit))
        usage = {name: m.read() for name, m in meter.items()}
        inspect = _batchrun.inspect_times(stack.url, run["job_id"])
        health = alive(stack)
    span = run.pop("span_s")
    done = run["state"] == "COMPLETED" and run["executions"] == {"COMPLETED": args.count}
    rate = args.count / span if span and done else 0.0  # no rate for a job that failed
    log(f"  {run['state']} {run['executions']}: {rate:,.0f} executions/s")
    fork = args.floors.get("fork_per_s")
    baseline = {"fork_exec_wait_true_per_s": fork, "ratio_to_fork_floor": ratio(rate, fork)}
    return {
        "figure": f"executions/s of one job of --count {args.count} (`true`, 2 process "
        "agents): submit -> the job's COMPLETED event",
        "value": round(rate, 1),
        "target": f">= {EXECS_TARGET:g}/s",
        "baseline": baseline,
        "pass": rate >= EXECS_TARGET and done and inspect["pass"] and health["all_alive"],
        "checks": {"all_completed": done, "processes_alive": health["all_alive"]},
        "seconds": None if span is None else round(span, 2),
        "completed_per_s": progress(run["executions"], span, args.limit),
        "run": run,
        "inspect": inspect,
        "processes": usage,
        "health": health,
    }


# -- many jobs -------------------------------------------------------------------------------
async def run_client(url: str, jobs: int, limit: float) -> dict[str, Any]:
    import hive

    # The client finds its cluster as hivectl does: nothing of this machine's may leak in.
    for name in [n for n in os.environ if n.startswith("HIVE_")]:
        del os.environ[name]
    os.environ["HIVE_CONFIG"] = str(_batchrun.empty_config())
    specs = [{"name": f"bench-{i}", "engine": "process", "command": ["true"]} for i in range(jobs)]
    ids: list[str] = []
    t_submitted = t_end = None
    states: dict[str, int] = {}
    async with hive.AsyncClient(url) as client:
        t0 = time.monotonic()
        try:
            ids = await client.submit_many(specs)
            t_submitted = time.monotonic() - t0
            final = await client.wait(ids, timeout=limit)
            t_end = time.monotonic() - t0
        except hive.HiveError as exc:  # a submit refused, or the wait timed out: say which
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = ""
            for job in final.values():
                states[job.state.value] = states.get(job.state.value, 0) + 1
    return {
        "submitted": len(ids),
        "submit_s": None if t_submitted is None else round(t_submitted, 3),
        "span_s": t_end,
        "job_states": states,
        "error": error,
    }


def part_client(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import hive  # noqa: F401  (the client: where it is missing, this part is skipped)
    except ImportError as exc:  # before the client lands on this branch
        log(f"client: skipped ({exc})")
        return {"pass": False, "skipped": f"import hive failed: {exc}"}
    with batch_stack("batch-client", args.agent_env) as stack:
        meter = meters(stack)
        log(f"client: {args.jobs} jobs through hive.AsyncClient (submit_many, wait)")
        run = asyncio.run(run_client(stack.url, args.jobs, args.limit))
        usage = {name: m.read() for name, m in meter.items()}
        health = alive(stack)
    return many_result(
        args,
        "hive.AsyncClient on one connection: submit_many, then wait",
        run,
        usage,
        health,
        target=JOBS_TARGET,
    )


def many_result(
    args: argparse.Namespace,
    how: str,
    run: dict[str, Any],
    usage: dict[str, Any],
    health: dict[str, Any],
    target: float | None,
) -> dict[str, Any]:
    span = run.pop("span_s")
    done = run["job_states"] == {"COMPLETED": args.jobs}
    rate = args.jobs / span if span and done else 0.0  # no rate unless every job completed
    log(f"  {run['job_states']}: {rate:,.0f} jobs/s")
    nats = args.floors.get("nats_per_s")
    # A comparison (no target) cut short by --limit still compares: its rate so far.
    passed = health["all_alive"] and (target is None or (done and rate >= target))
    if target is None and not done:
        rate = progress(run["job_states"], span, args.limit) or 0.0
    return {
        "figure": f"jobs/s of {args.jobs} one-execution jobs (`true`, 2 process agents), "
        f"{how}: first submit -> every job COMPLETED",
        "value": round(rate, 1),
        "target": f">= {target:g}/s" if target else "none (comparison)",
        "baseline": {"nats_request_reply_per_s": nats, "ratio_to_nats_floor": ratio(rate, nats)},
        "pass": passed,
        "checks": {"all_completed": done, "processes_alive": health["all_alive"]},
        "seconds": None if span is None else round(span, 2),
        "completed_per_s": progress(run["job_states"], span, args.limit),
        "run": run,
        "processes": usage,
        "health": health,
    }


def part_shell(args: argparse.Namespace) -> dict[str, Any]:
    with batch_stack("batch-shell", args.agent_env) as stack:
        meter = meters(stack)
        log(f"shell: {args.jobs} jobs from {SHELL_LOOPS} loops of `hivectl job submit --no-wait`")
        run = asyncio.run(_batchrun.run_shell(stack.url, args.jobs, SHELL_LOOPS, args.limit))
        usage = {name: m.read() for name, m in meter.items()}
        health = alive(stack)
    how = f"{SHELL_LOOPS} parallel shell loops of `hivectl job submit --no-wait`"
    return many_result(args, how, run, usage, health, target=None)


def part_file(args: argparse.Namespace) -> dict[str, Any]:
    with batch_stack("batch-file", args.agent_env) as stack:
        meter = meters(stack)
        log(f"file: {args.jobs} jobs in one file, `hivectl job submit -f FILE` (waiting)")
        run = asyncio.run(_batchrun.run_file(stack.url, args.jobs, args.limit))
        usage = {name: m.read() for name, m in meter.items()}
        health = alive(stack)
    how = "one `hivectl job submit -f FILE` of a list of them, waiting until all end"
    return many_result(args, how, run, usage, health, target=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = ["floors", "count", "client", "file", "shell"]
    parser.add_argument(
        "--part",
        choices=["all", *parts[1:]],
        default="all",
        help="the floors are measured whatever the part",
    )
    parser.add_argument("--count", type=int, default=2000, help="executions of the big job")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs of the client and shell parts")
    parser.add_argument("--limit", type=float, default=300.0, help="seconds each part may take")
    parser.add_argument(
        "--max-executions",
        type=int,
        help="each agent's max_executions (default: the agent's own, 8 per CPU core)",
    )
    args = parser.parse_args()
    args.agent_env = {}
    if args.max_executions is not None:
        args.agent_env["HIVE_MAX_EXECUTIONS"] = str(args.max_executions)
    if not 1 <= args.count <= 10_000 or args.jobs < 1 or args.limit <= 0:
        parser.error("need 1 <= count <= 10000, jobs >= 1, limit > 0")
    args.floors = {}
    every = {
        "floors": part_floors,
        "count": part_count,
        "client": part_client,
        "file": part_file,
        "shell": part_shell,
    }
    wanted = parts if args.part == "all" else ["floors", args.part]
    return _sim.run_parts("batch", {p: (lambda p=p: every[p](args)) for p in wanted})


if __name__ == "__main__":
    sys.exit(main())
