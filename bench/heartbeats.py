"""Heartbeat benchmark: one requester process, simulated nodes speaking the real protocol.

Part A (`--part throughput`): the raw nats-py receive rate (a plain callback subscriber
that only counts) as the baseline, then the requester offered 12,000 authenticated
heartbeats/s over 1,000 registered nodes for 10 s (target: >= 10,000/s absorbed, no
drops, no rejects), then a blast as fast as the generator can go.

Part B (`--part hold`): 50,000 registered nodes, each beating every 15 s with phases
spread uniformly, for 300 s: no HEALTHY -> UNHEALTHY transition, every node HEALTHY at
the end, and p99 send-to-recorded lag under 1 s as seen from outside by a probe node.

JSON result on stdout; progress on stderr. Exit 0 when every target of the parts run
passes, 1 otherwise.

    .venv/bin/python bench/heartbeats.py                         # everything (~10 min)
    .venv/bin/python bench/heartbeats.py --part throughput
    .venv/bin/python bench/heartbeats.py --part hold --nodes 5000 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sim
from _sim import CpuMeter, Stack, Worker, log, summary

THROUGHPUT_TARGET = 10_000  # authenticated heartbeats/s absorbed by one requester
LAG_TARGET_S = 1.0  # p99 send-to-recorded lag, holding 50,000 nodes
DEFAULT_INTERVAL = 15.0  # the agents' default heartbeat_interval


# -- part A ------------------------------------------------------------------------------
def raw_baseline(stack: Stack, count: int, seconds: float) -> dict[str, Any]:
    """A plain nats-py subscriber that only counts, fed by the same generator (blasting).

    Runs on its own subject prefix before the requester starts, so nothing else
    listens. Keys are random: the subscriber never checks them.
    """
    nodes: list[_sim.NodeKey | None] = [
        (node_id, os.urandom(32)) for node_id in _sim.node_ids(count, "raw")
    ]
    counter = Worker(
        _sim.count_messages,
        stack.url,
        "rawbase.node.*.heartbeat",
        2.0,
        seconds + 120,
        name="raw-counter",
    )
    gen = Worker(
        _sim.send_heartbeats, stack.url, nodes, None, seconds, 0.01, "rawbase", name="raw-gen"
    )
    try:
        counter.wait_ready()
        gen.wait_ready()
        counter.go()
        gen.go()
        g = gen.result(timeout=seconds + 120)
        c = counter.result(timeout=seconds + 180)
    finally:
        _sim.stop_all([gen, counter])
    span = max(c["t_last"] - c["t_first"], 1e-9)
    return {
        "name": "raw nats-py receive rate (callback subscriber that only counts)",
        "rate_per_s": round(c["received"] / span),
        "received": c["received"],
        "sent": g["sent"],
        "lost": g["sent"] - c["received"],
        "slow_consumer_drops": c["slow_consumer_drops"],
        "generator_send_rate_per_s": round(g["send_rate"]),
        "receive_span_s": round(span, 3),
        "seconds_blasted": seconds,
    }


def load_run(
    stack: Stack,
    nodes: list[_sim.NodeKey | None],
    rate: float | None,
    seconds: float,
    name: str,
) -> dict[str, Any]:
    """Offer heartbeats at `rate` (None: blast) and follow the requester's counters.

    Absorbed rate = heartbeats counted / (first send .. the first scrape that shows the
    final count). Scrapes every 0.1 s, so the end is late by at most ~0.1 s: the rate
    is, if anything, understated.
    """
    before = stack.scrape()
    gen = Worker(_sim.send_heartbeats, stack.url, nodes, rate, seconds, name=name)
    samples: list[tuple[float, int]] = []
    try:
        gen.wait_ready()
        cpu = CpuMeter(stack.requester_pid)
        gen.go()
        while not gen.done():
            time.sleep(0.1)
            samples.append((time.monotonic(), stack.scrape().heartbeats))
        g = gen.result(timeout=60)
        # Drain: until every heartbeat sent is counted or rejected, or nothing moves for 3 s.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            m = stack.scrape()
            now = time.monotonic()
            samples.append((now, m.heartbeats))
            done = m.heartbeats - before.heartbeats + m.rejected - before.rejected >= g["sent"]
            stalled = [t for t, v in samples if v != m.heartbeats]
            if done or (stalled and now - stalled[-1] > 3.0):
                break
            time.sleep(0.1)
        usage = cpu.read()
    finally:
        gen.stop()
    after = stack.scrape()
    final = after.heartbeats
    samples.append((time.monotonic(), final))  # so the final count is always in there
    t_final = next(t for t, v in samples if v == final)
    received = final - before.heartbeats
    rejected = after.rejected - before.rejected
    span = max(t_final - g["t_first"], 1e-9)
    return {
        "offered_rate_per_s": rate if rate is not None else "as fast as the generator can",
        "achieved_send_rate_per_s": round(g["send_rate"]),
        "seconds": seconds,
        "sent": g["sent"],
        "received": received,
        "rejected": rejected,
        "rejected_by_reason": {
            k: v - before.rejected_by_reason().get(k, 0)
            for k, v in after.rejected_by_reason().items()
            if v - before.rejected_by_reason().get(k, 0)
        },
        "absorbed_rate_per_s": round(received / span),
        "first_send_to_last_count_s": round(span, 3),
        "drain_after_last_send_s": round(max(0.0, t_final - g["t_last"]), 3),
        "generator_lateness_s": g["lateness_s"],
        "generator_errors": g["errors"],
        "requester": usage,
    }


def part_throughput(args: argparse.Namespace) -> dict[str, Any]:
    with Stack("throughput") as stack:
        stack.start_nats()
        log(f"baseline: raw nats-py subscriber, generator blasting for {args.blast_seconds:g}s")
        baseline = raw_baseline(stack, args.throughput_nodes, args.blast_seconds)
        log(f"  raw receive rate {baseline['rate_per_s']:,}/s (sent {baseline['sent']:,})")

        stack.start_requester()
        log(f"registering {args.throughput_nodes:,} nodes")
        reg = _sim.register(stack.url, args.throughput_nodes, procs=1, in_flight=200)
        nodes: list[_sim.NodeKey | None] = list(reg.pop("keys"))
        log(f"  {reg['registered']:,} registered in {reg['elapsed_s']}s")

        log(f"paced: {args.rate:,}/s offered for {args.rate_seconds:g}s")
        paced = load_run(stack, nodes, args.rate, args.rate_seconds, "paced-gen")
        log(
            f"  sent {paced['sent']:,} received {paced['received']:,} "
            f"rejected {paced['rejected']} absorbed {paced['absorbed_rate_per_s']:,}/s"
        )
        log(f"max: generator blasting for {args.blast_seconds:g}s")
        blast = load_run(stack, nodes, None, args.blast_seconds, "blast-gen")
        log(
            f"  sent {blast['sent']:,} received {blast['received']:,} "
            f"rejected {blast['rejected']} absorbed {blast['absorbed_rate_per_s']:,}/s"
        )
        alive = stack.requester_alive()

    checks = {
        "offered_at_least_target": paced["achieved_send_rate_per_s"] >= THROUGHPUT_TARGET,
        "absorbed_at_least_target": paced["absorbed_rate_per_s"] >= THROUGHPUT_TARGET,
        "no_drops": paced["received"] == paced["sent"],
        "no_rejects": paced["rejected"] == 0,
        "requester_alive": alive,
    }
    return {
        "figure": "authenticated heartbeats/s absorbed by one requester (12k/s offered)",
        "value": paced["absorbed_rate_per_s"],
        "target": f">= {THROUGHPUT_TARGET:,}/s with received == sent and rejected == 0",
        "baseline": {"raw_nats_py_receive_rate_per_s": baseline["rate_per_s"]},
        "pass": all(checks.values()),
        "checks": checks,
        "raw_baseline": baseline,
        "registration": reg,
        "paced": paced,
        "max": blast,
        "max_vs_raw": round(blast["absorbed_rate_per_s"] / max(baseline["rate_per_s"], 1), 3),
    }


# -- part B ------------------------------------------------------------------------------
async def probe_once(nc: Any, node: _sim.NodeKey, seq: int, poll: float) -> dict[str, Any]:
    """Time one heartbeat from send until the requester's API shows it recorded.

    First a plain node.get (the API round trip: the floor of this measurement), then
    the heartbeat, then node.get every `poll` s until `last_heartbeat` (the requester's
    own receive clock) is at or after the send time.
    """
    from hivectl.core import bus
    from hivectl.core.api import NodeGetReply, NodeGetRequest

    get = _sim.PREFIX + ".api.node.get"
    ask = NodeGetRequest(id=node[0])
    t = time.time()
    await bus.request(nc, get, ask, NodeGetReply, timeout=10)
    rtt = time.time() - t
    frame = _sim.heartbeat_frame(node[0], seq, node[1])
    sent = time.time()
    await nc.publish(f"{_sim.PREFIX}.node.{node[0]}.heartbeat", frame)
    polls = 0
    while True:
        reply = await bus.request(nc, get, ask, NodeGetReply, timeout=10)
        polls += 1
        seen = time.time()
        last = reply.node.last_heartbeat
        if last is not None and last.timestamp() >= sent:
            return {
                "observed": seen - sent,
                "recorded": last.timestamp() - sent,
                "api_rtt": rtt,
                "polls": polls,
            }
        if seen - sent > 30:
            return {"observed": float("inf"), "recorded": None, "api_rtt": rtt, "polls": polls}
        await asyncio.sleep(poll)


def timed_scrape(stack: Stack) -> tuple[_sim.Metrics, float]:
    t = time.monotonic()
    m = stack.scrape()
    return m, time.monotonic() - t


async def hold_loop(
    stack: Stack, gen: Worker, probe: _sim.NodeKey, seconds: float, steady_after: float
) -> dict[str, Any]:
    import nats

    nc = await nats.connect(stack.url, name="bench-probe")
    await asyncio.to_thread(gen.wait_ready)
    before = await asyncio.to_thread(stack.scrape)
    meters = {
        "requester": CpuMeter(stack.requester_pid),
        "nats_server": CpuMeter(stack.nats_pid),
    }
    gen.go()
    t0 = time.monotonic()
    seq = _sim.seq_base()
    probes: list[dict[str, Any]] = []
    scrapes: list[dict[str, Any]] = []
    scrape_task: asyncio.Task[Any] | None = None
    scrape_started = 0.0
    next_scrape = t0 + 5
    next_note = t0 + 30
    tick = 0
    steady: CpuMeter | None = None  # the requester once every node has been heard once
    while time.monotonic() - t0 < seconds:
        if steady is None and time.monotonic() - t0 >= steady_after:
            steady = CpuMeter(stack.requester_pid)
        seq += 1
        result = await probe_once(nc, probe, seq, 0.005)
        result["t"] = time.monotonic() - t0
        probes.append(result)
        now = time.monotonic()
        if scrape_task is not None and scrape_task.done():
            m, took = scrape_task.result()
            scrapes.append(
                {
                    "t": round(scrape_started - t0, 1),
                    "scrape_s": round(took, 3),
                    "healthy": m.health("HEALTHY"),
                    "unhealthy": m.health("UNHEALTHY"),
                    "false_unhealthy": m.false_unhealthy,
                    "heartbeats": m.heartbeats - before.heartbeats,
                    "rejected": m.rejected - before.rejected,
                }
            )
            for meter in meters.values():
                meter.rss()
            scrape_task = None
        if scrape_task is None and now >= next_scrape:
            scrape_started, next_scrape = now, now + 5
            scrape_task = asyncio.create_task(asyncio.to_thread(timed_scrape, stack))
        if now >= next_note and scrapes:
            s = scrapes[-1]
            next_note = now + 30
            log(
                f"  t={now - t0:.0f}s healthy {s['healthy']:,} unhealthy {s['unhealthy']} "
                f"false-unhealthy {s['false_unhealthy']} probe lag "
                f"p99 {_sim.percentile([p['observed'] for p in probes], 99) * 1000:.0f} ms"
            )
        tick += 1
        await asyncio.sleep(max(0.0, t0 + tick - time.monotonic()))
    if scrape_task is not None:
        await scrape_task
    g = await asyncio.to_thread(gen.result, 120)
    usage = {name: meter.read() for name, meter in meters.items()}
    if steady is not None:
        usage["requester_after_first_interval"] = steady.read()
    usage["generator"] = {
        "cpu_s": round(g["cpu_s"], 2),
        "cpu_pct_of_one_core": round(100 * g["cpu_s"] / max(g["t_flushed"] - t0, 1e-9), 1),
    }
    after = await asyncio.to_thread(stack.scrape)
    await nc.close()
    return {
        "probes": probes,
        "scrapes": scrapes,
        "generator": g,
        "usage": usage,
        "before": before,
        "after": after,
    }


def part_hold(args: argparse.Namespace) -> dict[str, Any]:
    n = args.nodes
    with Stack("hold") as stack:
        stack.start_nats().start_requester()
        log(
            f"registering {n:,} nodes ({args.register_procs} processes, {args.in_flight} in flight)"
        )
        reg = _sim.register(
            stack.url, n, procs=args.register_procs, in_flight=args.in_flight, timeout=60
        )
        keys = reg.pop("keys")
        log(f"  {reg['registered']:,} registered in {reg['elapsed_s']}s ({reg['rate_per_s']}/s)")
        if len(keys) < 2:
            raise SystemExit("registration failed: " + json.dumps(reg))
        # Node 0 is the probe: it beats every second from this process (covering its own
        # 15 s slot); every other node beats every `interval` s, node i first at i*interval/N.
        slots: list[_sim.NodeKey | None] = [None, *keys[1:]]
        rate = len(slots) / args.interval
        gen = Worker(_sim.send_heartbeats, stack.url, slots, rate, args.duration, name="hold-gen")
        log(
            f"holding {len(keys):,} nodes for {args.duration:g}s: one beat each per "
            f"{args.interval:g}s ({rate:,.0f}/s), probe every 1s"
        )
        try:
            run = asyncio.run(hold_loop(stack, gen, keys[0], args.duration, args.interval + 1))
        finally:
            gen.stop()
        alive = stack.requester_alive()
        log_tail = stack.requester_log(10) if not alive else ""

    before, after, g = run["before"], run["after"], run["generator"]
    probes = run["probes"]
    observed = [p["observed"] for p in probes]
    first = [p["observed"] for p in probes if p["t"] < args.interval + 1]
    steady = [p["observed"] for p in probes if p["t"] >= args.interval + 1]
    recorded = [p["recorded"] for p in probes if p["recorded"] is not None]
    p99 = _sim.percentile(observed, 99)
    worst_false = max([s["false_unhealthy"] for s in run["scrapes"]] + [after.false_unhealthy])
    expected_heartbeats = g["sent"] + len(probes)
    received = after.heartbeats - before.heartbeats
    rejected = after.rejected - before.rejected
    checks = {
        "p99_lag_under_1s": p99 < LAG_TARGET_S,
        "zero_false_unhealthy": worst_false == 0,
        "all_healthy_at_end": after.health("HEALTHY") == len(keys),
        "all_registered": reg["failed"] == 0,
        "no_drops": received == expected_heartbeats,
        "no_rejects": rejected == 0,
        "generator_on_schedule": g["batches_late_over_1s"] == 0,
        "requester_alive": alive,
    }
    result: dict[str, Any] = {
        "figure": "p99 heartbeat send-to-recorded lag, holding "
        f"{len(keys):,} nodes at a {args.interval:g}s interval for {args.duration:g}s (s)",
        "value": round(p99, 4),
        "target": f"< {LAG_TARGET_S:g} s, zero HEALTHY->UNHEALTHY, all {n:,} HEALTHY at the end",
        "baseline": {"api_node_get_rtt_s": summary([p["api_rtt"] for p in probes])},
        "pass": all(checks.values()),
        "checks": checks,
        "nodes": len(keys),
        "interval_s": args.interval,
        "duration_s": args.duration,
        "registration": reg,
        "lag_s": {
            "method": "probe node sends a heartbeat, then polls hive.api.node.get every 5 ms "
            "until last_heartbeat >= send time; 'observed' is an upper bound (it includes one "
            "API round trip and the poll period), 'recorded' is the requester's own receive "
            "time minus the send time",
            "observed": summary(observed),
            "observed_first_interval": summary(first),
            "observed_steady": summary(steady),
            "recorded": summary(recorded),
        },
        "health": {
            "healthy_at_end": after.health("HEALTHY"),
            "unhealthy_at_end": after.health("UNHEALTHY"),
            "false_unhealthy_max_seen": worst_false,
            "scrapes": len(run["scrapes"]),
            "scrape_s": summary([s["scrape_s"] for s in run["scrapes"]], 3),
        },
        "messages": {
            "generator_sent": g["sent"],
            "probe_sent": len(probes),
            "requester_received": received,
            "rejected": rejected,
            "rejected_by_reason": after.rejected_by_reason(),
        },
        "generator": {
            "offered_rate_per_s": round(rate, 1),
            "achieved_send_rate_per_s": round(g["send_rate"], 1),
            "lateness_s": g["lateness_s"],
            "batches_late_over_1s": g["batches_late_over_1s"],
            "errors": g["errors"],
        },
        "processes": run["usage"],
    }
    if log_tail:
        result["requester_log_tail"] = log_tail
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "throughput", "hold"], default="all")
    parser.add_argument("--throughput-nodes", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=12_000, help="offered heartbeats/s (part A)")
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--blast-seconds", type=float, default=5.0)
    parser.add_argument("--nodes", type=int, default=50_000, help="nodes held (part B)")
    parser.add_argument("--duration", type=float, default=300.0, help="hold seconds (part B)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    parser.add_argument("--register-procs", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=200)
    args = parser.parse_args()
    if args.nodes < 2 or args.throughput_nodes < 1:
        parser.error("need at least 2 nodes for the hold and 1 for throughput")

    every = {"throughput": lambda: part_throughput(args), "hold": lambda: part_hold(args)}
    wanted = list(every) if args.part == "all" else [args.part]
    return _sim.run_parts("heartbeats", {part: every[part] for part in wanted})


if __name__ == "__main__":
    sys.exit(main())
