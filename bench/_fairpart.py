"""bench/jobs.py --part fair: the placement rate with quotas, priorities and fair share
in play, against the same workload without them, in one run on the same nodes.

One nats-server, one requester process, `--nodes` simulated nodes (as part placement).
Rounds alternate plain, fair, fair, plain, ... (each setup gets the same share of early
and late rounds); each round submits `--jobs` jobs x `--count` executions, every one
asking 0.1 CPU and 16 MiB so the quota arithmetic runs on every placement.

- plain: no quota set, every job at the default priority 50;
- fair: a quota for the submitting user and a default quota for every user (CPU,
  memory and queued jobs, each large enough not to bind: what is measured is the cost
  of checking them), and priorities 10, 50 and 90 in turn, so the queue orders by
  priority and by fair share at every pick.

In fair rounds the jobs are three users' (submitters added before the first round),
in turn, each submit signed and its reply sealed as hivectl does for a user: the fair
queue compares owners, the quota gate charges each, the gate checks every signature.
Plain rounds submit over the operator credential, as the built-in admin.

Fair share itself cannot be switched off (it is the scheduler's order); with every job
at one priority and one owner it orders first come, first served, as before it. Its
cost per pick grows with the owners at the top priority, not with the jobs (see
requester/jobs/fairqueue.py).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
from collections.abc import Callable
from typing import Any

import _jobsim
import _sim
from _sim import PREFIX, log

PRIORITIES = (10, 50, 90)
ASK = {"resources": {"cpu": 0.1, "memory": "16MiB"}}
USERS = ("alice", "bob", "carol")  # who submits in fair rounds, job by job in turn

Round = Callable[..., dict[str, Any]]  # jobs.placement_round
Ready = Callable[..., Any]  # jobs.wait_nodes


def plain(i: int) -> dict[str, Any]:
    return dict(ASK)


def fair(i: int) -> dict[str, Any]:
    return {**ASK, "priority": PRIORITIES[i % len(PRIORITIES)]}


async def add_users(url: str) -> list[Any]:
    """The bench's users, as `hivectl user add` makes them: a key pair here, the public
    half to the requester; each user's credential (to sign with) comes back."""
    from hivectl.core import bus
    from hivectl.core.auth import Identity
    from hivectl.core.signing import UserCredential
    from hivectl.core.users import Role, UserAddReply, UserAddRequest

    nc, _ = await _sim._connect(url, "bench-users")
    found = []
    try:
        for name in USERS:
            identity = Identity.generate()
            ask = UserAddRequest(
                name=name, role=Role.SUBMITTER, public_key=identity.public_key, with_nats=False
            )
            reply = await bus.request(nc, f"{PREFIX}.api.user.add", ask, UserAddReply, timeout=10)
            found.append(UserCredential(name, identity, reply.requester_key))
    finally:
        await nc.close()
    return found


def in_turn(users: list[Any], i: int) -> Any:
    """Job i's submitter: the users one after another."""
    return users[i % len(users)]


async def set_quotas(url: str, on: bool) -> None:
    """Quotas for the bench's users and the default (`on`), or none at all."""
    from hivectl.core import bus
    from hivectl.core.quotas import LIMITS, QuotaReply, QuotaSetRequest

    nc, _ = await _sim._connect(url, "bench-quota")
    subject = f"{PREFIX}.api.quota.set"
    try:
        for who in (*({"user": name} for name in USERS), {"default": True}):
            if on:
                limits = {"cpu": 100_000, "memory": "1PiB", "queued": 1_000_000}
                request = QuotaSetRequest(**who, **limits)
            else:
                request = QuotaSetRequest(**who, clear=list(LIMITS))
            await bus.request(nc, subject, request, QuotaReply, timeout=10)
    finally:
        await nc.close()


def part_fair(args: argparse.Namespace, one_round: Round, ready: Ready) -> dict[str, Any]:
    total = args.jobs * args.count
    with _jobsim.JobStack("jobs-fair", env={"HIVE_JOB_RETENTION": "1s"}) as stack:
        stack.start_nats()
        stack.start_requester(env={"HIVE_NAME": "req-1"})
        log(f"registering {args.nodes:,} simulated nodes")
        reg = _sim.register(stack.url, args.nodes, procs=1, in_flight=200, report=True)
        keys = reg.pop("keys")
        asyncio.run(ready(stack, len(keys), 60))
        users = asyncio.run(add_users(stack.url))
        rounds: dict[str, list[dict[str, Any]]] = {"plain": [], "fair": []}
        for i in range(2 * args.rounds):
            setup = "plain" if (i % 4) in (0, 3) else "fair"
            asyncio.run(set_quotas(stack.url, setup == "fair"))
            if setup == "fair":
                turns = functools.partial(in_turn, users)
                rounds[setup].append(one_round(stack, args, keys, setup, fair, turns))
            else:
                rounds[setup].append(one_round(stack, args, keys, setup, plain))
        alive = stack.requester_alive()
    return fair_result(args, total, rounds, alive)


def fair_result(
    args: argparse.Namespace, total: int, rounds: dict[str, list[dict[str, Any]]], alive: bool
) -> dict[str, Any]:
    def median(setup: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in rounds[setup])

    placed = {setup: median(setup, "placed_rate") for setup in rounds}
    for rs in rounds.values():  # the requester's CPU per execution: what load cannot blur
        for r in rs:
            r["cpu_ms"] = 1000 * r["usage"]["requester"]["cpu_s"] / total
    confirmed = {setup: median(setup, "rate") for setup in rounds}
    target = 2_000
    checks = {
        "fair_placed_at_least_target": placed["fair"] >= target,
        "every_round_complete": all(r["checks_pass"] for rs in rounds.values() for r in rs),
        "requester_alive": alive,
    }
    return {
        "figure": f"executions placed/s with quotas, priorities and fair share in play "
        f"({args.nodes:,} sim nodes; {args.jobs} jobs x count {args.count} = {total:,} "
        f"executions a round; median of {len(rounds['fair'])} rounds; first submit -> last "
        "accept at the nodes)",
        "value": round(placed["fair"], 1),
        "target": f">= {target:,}/s",
        "baseline": {
            "figure": "the same, plain: no quotas, every job at priority 50 (same run, "
            "nodes and workload, rounds interleaved)",
            "value": round(placed["plain"], 1),
        },
        "ratio_to_plain": round(placed["fair"] / placed["plain"], 3) if placed["plain"] else None,
        "pass": all(checks.values()),
        "checks": checks,
        "placed_per_s_by_round": {
            setup: [round(r["placed_rate"], 1) for r in rs] for setup, rs in rounds.items()
        },
        "confirmed_in_api_per_s_median": {k: round(v, 1) for k, v in confirmed.items()},
        "requester_cpu_ms_per_execution_median": {
            setup: round(median(setup, "cpu_ms"), 3) for setup in rounds
        },
        "processes_last_round": {setup: rs[-1]["usage"] for setup, rs in rounds.items()},
        "users": f"fair rounds: {len(USERS)} submitters, signed requests, sealed replies",
    }
