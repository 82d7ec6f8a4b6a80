"""What a user's signed, sealed request costs over the operator credential's plain one.

A real nats-server and `hive-requester run`; one user added (`user.add`). Then rounds,
interleaved: `--requests` `job get` requests (a small job the user owns, so the reply
is a whole job record) sent 64 at a time through `hive.AsyncClient`, once as the
operator (plain `api` requests: the baseline, measured in the same run) and once as the
user (`uapi`: Ed25519-signed by the client, verified, owner-checked and sealed by the
requester, opened by the client). Figure: the user's requests per second; target: at
least half the operator's, so that signing never dominates what a request costs. Also
the requester's CPU seconds per 1,000 requests of each kind.

JSON on stdout; progress on stderr; exit 0 when the target is met.

    .venv/bin/python bench/users.py [--requests 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sim
from _sim import Stack, log

TARGET_RATIO = 0.5


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def one_round(client: Any, job_id: str, requests: int) -> float:
    """Requests per second of `requests` gets of `job_id` through `client`."""
    started = time.perf_counter()
    await client.bounded([lambda: client.get(job_id) for _ in range(requests)])
    return requests / (time.perf_counter() - started)


async def measure(stack: Stack, requests: int, rounds: int) -> dict[str, Any]:
    from hivectl.core.auth import Identity
    from hivectl.core.client import AsyncClient
    from hivectl.core.config import ClientConfig, NatsSettings
    from hivectl.core.signing import user_credential_text
    from hivectl.core.users import Role, UserAddReply, UserAddRequest

    operator = AsyncClient(config=ClientConfig(nats=NatsSettings(url=stack.url)))
    await operator.connect()
    key = Identity.generate()
    request = UserAddRequest(
        name="bench", role=Role.SUBMITTER, public_key=key.public_key, with_nats=False
    )
    added = await operator.call("user", "add", request, UserAddReply)
    creds = stack.tmp / "bench.creds.toml"
    creds.write_text(user_credential_text("bench", key.seed, added.requester_key, "", ""))
    user = AsyncClient(
        config=ClientConfig(nats=NatsSettings(url=stack.url, credentials_file=creds))
    )
    await user.connect()
    job_id = await user.submit({"engine": "process", "command": ["true"]})
    rates: dict[str, list[float]] = {"operator": [], "user": []}
    cpu: dict[str, float] = {"operator": 0.0, "user": 0.0}
    await one_round(user, job_id, 200)  # warm both paths
    await one_round(operator, job_id, 200)
    for r in range(rounds):
        for name, client in (("operator", operator), ("user", user)):
            before = cpu_seconds(stack.requester_pid)
            rates[name].append(await one_round(client, job_id, requests))
            cpu[name] += cpu_seconds(stack.requester_pid) - before
        log(
            f"round {r + 1}: operator {rates['operator'][-1]:.0f}/s, user {rates['user'][-1]:.0f}/s"
        )
    await user.close()
    await operator.close()
    total = requests * rounds
    return {
        "rates": rates,
        "cpu_s_per_1000": {k: round(v / total * 1000, 3) for k, v in cpu.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    host = _sim.host_info()
    stack = Stack("users").start_nats().start_requester()
    try:
        measured = asyncio.run(measure(stack, args.requests, args.rounds))
    finally:
        stack.close()
    user = statistics.median(measured["rates"]["user"])
    operator = statistics.median(measured["rates"]["operator"])
    result = {
        "bench": "users",
        "figure": "job get requests/s as a user (signed, verified, owner-checked, sealed)",
        "value": round(user),
        "target": f">= {TARGET_RATIO:g} x the operator's plain requests/s, same run",
        "baseline": {"operator_requests_per_s": round(operator)},
        "ratio": round(user / operator, 3),
        "all_rates": {k: [round(x) for x in v] for k, v in measured["rates"].items()},
        "requester_cpu_s_per_1000_requests": measured["cpu_s_per_1000"],
        "pass": user >= TARGET_RATIO * operator,
        "host_at_start": host,
        "loadavg_at_end": _sim.host_info()["loadavg_1_5_15"],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
