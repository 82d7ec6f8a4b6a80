"""Helpers for bench/jobs.py: worker targets for simulated compute nodes and for the
NATS request/reply floor, and a Stack that starts the requester with --auto-approve.

Not a benchmark itself (the leading `_`). Built on bench/_sim.py (imported, unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import _sim
from _sim import PREFIX, Control, NodeKey, clean_env, summary

ECHO_SUBJECT = "bench.echo"


class JobStack(_sim.Stack):
    """_sim.Stack, but the requester auto-approves and takes extra environment."""

    def __init__(self, name: str, *, env: dict[str, str] | None = None) -> None:
        super().__init__(name)
        self.extra_env = env or {}
        self.agents: list[subprocess.Popen[bytes]] = []
        self._followers: list[subprocess.Popen[bytes]] = []

    @property
    def followers(self) -> list[int]:
        return [proc.pid for proc in self._followers]

    def start_follower(self, name: str, timeout: float = 60.0) -> int:
        """A second requester on the same NATS (its own data dir); its metrics port."""
        port = _sim.free_port()
        cmd = [str(_sim.BIN / "hive-requester"), "run", "--config", str(self.empty_config),
               "--nats-url", self.url, "--data-dir", str(self.tmp / name), "--auto-approve",
               "--metrics-port", str(port), "--log-level", "WARNING"]  # fmt: skip
        out = (self.tmp / f"{name}.log").open("wb")
        env = clean_env(HIVE_HEALTH_CHECK_INTERVAL="1s", HIVE_NAME=name, **self.extra_env)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_sim._die_with_parent)  # fmt: skip
        out.close()
        self._followers.append(proc)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                self.scrape(timeout=1.0, port=port)
                _sim.log(f"second requester {name} ready (pid {proc.pid}, metrics :{port})")
                _settle(proc.pid, deadline)
                return port
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"requester {name} did not start")
            time.sleep(0.1)

    def start_requester(
        self,
        timeout: float = 60.0,
        *,
        args: Sequence[str] = ("--auto-approve",),
        env: dict[str, str] | None = None,
    ) -> JobStack:
        super().start_requester(timeout, args=args, env=self.extra_env | (env or {}))
        return self

    def start_agent(self, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A real node agent (`python -m nodeagent run`), as devstack starts one."""
        state = self.tmp / name
        cmd = [
            _sim.PYTHON,
            "-m",
            "nodeagent",
            "run",
            "--nats-url",
            self.url,
            "--name",
            name,
            "--state-dir",
            str(state),
            "--log-level",
            "WARNING",
        ]
        full = clean_env(HIVE_CONFIG=str(self.empty_config), **env)
        out = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            cmd,
            cwd=str(_sim.REPO),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full,
            preexec_fn=_sim._die_with_parent,
        )
        out.close()
        self.agents.append(proc)
        return proc

    def agent_log(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_followers(self) -> None:
        """Stop the second requesters (SIGTERM, and wait): the first leads on alone."""
        followers, self._followers = self._followers, []
        for proc in followers:
            proc.terminate()
        for proc in followers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop_followers()
        for proc in self.agents:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.agents:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.agents = []
        super().close()


def _settle(pid: int, deadline: float, idle: float = 0.05) -> None:
    """Until process `pid` uses under `idle` of a core over 0.2s (its start-up done:
    loading the buckets, the first watch catch-up), or the deadline."""
    meter = _sim.CpuMeter(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        used = meter.read()
        if used["cpu_pct_of_one_core"] < idle * 100:
            return
        meter = _sim.CpuMeter(pid)


# -- worker targets ------------------------------------------------------------------------
async def echo_responder(ctl: Control, url: str, limit: float) -> dict[str, Any]:
    """A trivial responder: answers every request on ECHO_SUBJECT with its own payload."""
    nc, errors = await _sim._connect(url, "bench-echo")
    served = 0
    done = asyncio.Event()

    async def on_request(msg: Any) -> None:
        nonlocal served
        served += 1
        await msg.respond(msg.data)

    async def on_stop(msg: Any) -> None:
        done.set()

    await nc.subscribe(ECHO_SUBJECT, cb=on_request, pending_msgs_limit=1_000_000)
    await nc.subscribe(ECHO_SUBJECT + ".stop", cb=on_stop)
    await nc.flush()
    ctl.ready_then_wait()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), limit)
    await nc.close()
    return {"served": served, "errors": dict(errors)}


async def answer_offers(
    ctl: Control,
    url: str,
    keys: list[NodeKey],
    expected: int,
    limit: float,
    beat_every: float,
) -> dict[str, Any]:
    """Play every node in `keys` on one connection: accept every offer at once.

    One wildcard subscription answers `hive.compute.*.offer` for all of them (each offer
    is opened with its own node's MAC key and checked to be addressed to that node);
    cancels get an OkReply. Every node heartbeats every `beat_every` s so it stays
    HEALTHY however long the run. Stops once `expected` offers were accepted, or after
    `limit` s; returns when the first and the last accept were answered.
    """
    from hivectl.core import auth, codec
    from hivectl.core.jobs import Cancel, Offer, OfferReply
    from hivectl.core.models import OkReply

    nc, nc_errors = await _sim._connect(url, "bench-simcompute")
    keymap = dict(keys)
    accepted = 0
    bad = 0
    cancels = 0
    first = last = 0.0
    per_node: dict[str, int] = {}
    offer_bytes = 0
    done = asyncio.Event()
    cpu0 = time.process_time()

    async def on_offer(msg: Any) -> None:
        nonlocal accepted, bad, first, last, offer_bytes
        node = msg.subject.split(".")[-2]
        key = keymap.get(node)
        try:
            if key is None:
                raise auth.AuthError("unknown node")
            offer = codec.decode(auth.open_sealed(msg.data, key), Offer)
            if offer.node_id != node:
                raise auth.AuthError("offer for another node")
        except (auth.AuthError, codec.CodecError):
            bad += 1
            return
        await msg.respond(codec.encode(OfferReply(exec_id=offer.exec_id, accepted=True)))
        now = time.monotonic()
        if not accepted:
            first = now
            offer_bytes = len(msg.data)
        last = now
        accepted += 1
        per_node[node] = per_node.get(node, 0) + 1
        if accepted >= expected:
            done.set()

    async def on_cancel(msg: Any) -> None:
        nonlocal cancels
        node = msg.subject.split(".")[-2]
        key = keymap.get(node)
        if key is None:
            return
        try:
            cancel = codec.decode(auth.open_sealed(msg.data, key), Cancel)
        except (auth.AuthError, codec.CodecError):
            return
        cancels += 1
        await msg.respond(codec.encode(OkReply(id=cancel.exec_id)))

    big = {"pending_msgs_limit": 1_000_000, "pending_bytes_limit": 512 * 1024 * 1024}
    await nc.subscribe(f"{PREFIX}.compute.*.offer", cb=on_offer, **big)
    await nc.subscribe(f"{PREFIX}.compute.*.cancel", cb=on_cancel, **big)
    await nc.flush()

    seq = [_sim.seq_base()]

    async def beat_all() -> None:
        while True:
            seq[0] += 1
            for i, (node_id, key) in enumerate(keys):
                frame = _sim.heartbeat_frame(node_id, seq[0], key)
                await nc.publish(f"{PREFIX}.node.{node_id}.heartbeat", frame)
                if i % 200 == 199:
                    await asyncio.sleep(0)
            await asyncio.sleep(beat_every)

    beater = asyncio.create_task(beat_all())
    ctl.ready_then_wait()
    t0 = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), limit)
    beater.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await beater
    cpu_s = time.process_time() - cpu0
    await nc.flush()
    await nc.close()
    counts = sorted(per_node.values())
    return {
        "accepted": accepted,
        "bad_offers": bad,
        "cancels": cancels,
        "t_go": t0,
        "t_first_accept": first,
        "t_last_accept": last,
        "offer_bytes": offer_bytes,
        "nodes_used": len(per_node),
        "execs_per_node_min_max": [counts[0], counts[-1]] if counts else [],
        "cpu_s": round(cpu_s, 2),
        "errors": dict(nc_errors),
    }


# -- the NATS floor, measured from the calling process ------------------------------------------
async def nats_floor(
    url: str, payload: int, sequential: int, burst: int, in_flight: int
) -> dict[str, Any]:
    """Round trips to the echo worker: `sequential` one at a time (latency), then `burst`
    with `in_flight` outstanding (rate). The echo worker must be running."""
    nc, _ = await _sim._connect(url, "bench-floor")
    data = b"x" * payload
    for _ in range(50):  # warm-up
        await nc.request(ECHO_SUBJECT, data, timeout=5)
    rtts: list[float] = []
    for _ in range(sequential):
        t = time.perf_counter()
        await nc.request(ECHO_SUBJECT, data, timeout=5)
        rtts.append(time.perf_counter() - t)
    sem = asyncio.Semaphore(in_flight)
    burst_rtts: list[float] = []

    async def one() -> None:
        async with sem:
            t = time.perf_counter()
            await nc.request(ECHO_SUBJECT, data, timeout=10)
            burst_rtts.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(burst)))
    elapsed = time.perf_counter() - t0
    await nc.publish(ECHO_SUBJECT + ".stop", b"")
    await nc.flush()
    await nc.close()
    return {
        "payload_bytes": payload,
        "sequential_rtt_s": summary(rtts, 6),
        "burst": {
            "requests": burst,
            "in_flight": in_flight,
            "rate_per_s": round(burst / elapsed),
            "rtt_s": summary(burst_rtts, 6),
        },
    }


def measure_nats_floor(
    url: str, payload: int, sequential: int, burst: int, in_flight: int
) -> dict[str, Any]:
    echo = _sim.Worker(echo_responder, url, 300.0, name="echo")
    try:
        _sim.start_together([echo])
        result = asyncio.run(nats_floor(url, payload, sequential, burst, in_flight))
        result["responder"] = echo.result(timeout=30)
    finally:
        echo.stop()
    return result


async def fork_exec_floor(runs: int) -> dict[str, Any]:
    """`true` via asyncio.create_subprocess_exec, started and waited for, `runs` times."""
    times: list[float] = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "true", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
        )
        await proc.wait()
        times.append(time.perf_counter() - t)
    return {"runs": runs, "s": summary(times, 6)}


if __name__ == "__main__":
    print("bench/_jobsim.py is a helper module for bench/jobs.py; nothing to run.", file=sys.stderr)
    sys.exit(0)
