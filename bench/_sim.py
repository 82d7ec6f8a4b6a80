"""Shared helpers for the benchmarks in bench/: a real nats-server, the requester as a
process, its Prometheus figures, and simulated nodes in worker processes.

Not a benchmark itself (the leading `_`): `make bench` skips it, and running it
directly does nothing. The benchmarks import it as a sibling module.

Simulated nodes speak the real protocol, as tests/support/simnode.py does: a signed
registration, then heartbeats (and resource reports) sealed with the MAC key derived
from the reply, each with a fresh, increasing sequence number. They run in worker
processes (multiprocessing, spawn) so the load generator never shares the requester's
process or event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_VENV_BIN = REPO / ".venv" / "bin"
BIN = _VENV_BIN if (_VENV_BIN / "python").exists() else Path(sys.executable).parent
PYTHON = str(BIN / "python")
PREFIX = "hive"

NodeKey = tuple[str, bytes]  # (node id, MAC key shared with the requester)
Target = Callable[..., Coroutine[Any, Any, dict[str, Any]]]  # a worker's async entry point


# -- small things ------------------------------------------------------------------------
def log(message: str) -> None:
    """Progress goes to stderr; stdout is for the JSON result alone."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def host_info() -> dict[str, Any]:
    """What the figures were measured on; the load average shows whether anything else
    was competing for the CPUs (it should be near 0 before a run)."""
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def run_parts(bench: str, parts: dict[str, Callable[[], dict[str, Any]]]) -> int:
    """Run each part, print the whole result as JSON, and return the exit status (0 when
    every part passed). A part that raises is reported as failed; the others still run."""
    started = time.monotonic()
    out: dict[str, Any] = {"bench": bench, "host_at_start": host_info()}
    for part, run in parts.items():
        try:
            out[part] = run()
        except Exception as exc:
            log(f"{part} failed: {type(exc).__name__}: {exc}")
            out[part] = {"pass": False, "error": f"{type(exc).__name__}: {exc}"}
    out["loadavg_at_end"] = host_info()["loadavg_1_5_15"]
    out["pass"] = all(out[p]["pass"] for p in parts)
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(out, indent=2, default=str))
    return 0 if out["pass"] else 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any HIVE_* setting that could leak in, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env.update(extra)
    return env


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
    }


def _die_with_parent() -> None:
    """In a child: SIGTERM when the benchmark dies, even by kill -9 (Linux only)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- Prometheus text -----------------------------------------------------------------------
class Metrics:
    """One scrape of the requester's /metrics, by sample name and labels."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def get(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent: counters appear on first increment)."""
        want = frozenset(labels.items())
        return self.samples.get((name, want), 0.0)

    def total(self, name: str) -> float:
        """The sum of a metric over all its label values."""
        return sum(v for (n, _), v in self.samples.items() if n == name)

    # The requester's figures, by name.
    @property
    def heartbeats(self) -> int:
        return int(self.get("hive_node_messages_received_total", kind="heartbeat"))

    @property
    def resources(self) -> int:
        return int(self.get("hive_node_messages_received_total", kind="resources"))

    @property
    def rejected(self) -> int:
        return int(self.total("hive_node_messages_rejected_total"))

    def rejected_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (name, labels), value in self.samples.items():
            if name == "hive_node_messages_rejected_total" and value:
                out[dict(labels).get("reason", "?")] = int(value)
        return out

    @property
    def false_unhealthy(self) -> int:
        return int(
            self.get("hive_node_health_transitions_total", **{"from": "HEALTHY", "to": "UNHEALTHY"})
        )

    def health(self, status: str) -> int:
        return int(self.get("hive_nodes_health", status=status))

    def approval(self, state: str) -> int:
        return int(self.get("hive_nodes", approval=state))


# -- the cluster under test ------------------------------------------------------------------
class Stack:
    """A real nats-server (embedded helper, own temp dir) and the requester as a process.

    The requester runs exactly as an operator runs it (`hive-requester run`), with an
    empty config file so nothing from this machine leaks in, `HIVE_HEALTH_CHECK_INTERVAL=1s`
    and the default unhealthy/disconnected thresholds (30s/60s).
    """

    def __init__(self, name: str, *, max_payload: int = 1024 * 1024) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"hive-bench-{name}-"))
        self.max_payload = max_payload
        self.nats: Any = None
        self.requester: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.empty_config = self.tmp / "empty.toml"
        self.empty_config.write_text("")
        self._req_log = self.tmp / "requester.log"

    @property
    def url(self) -> str:
        assert self.nats is not None
        return str(self.nats.url)

    @property
    def requester_pid(self) -> int:
        assert self.requester is not None
        return self.requester.pid

    @property
    def nats_pid(self) -> int | None:
        return self.nats.pid if self.nats is not None else None

    def start_nats(self) -> Stack:
        from hivectl.core.embedded import EmbeddedNats

        self.nats = EmbeddedNats(self.tmp / "nats", port=0, max_payload=self.max_payload).start()
        log(f"nats-server on {self.url} (pid {self.nats.pid})")
        return self

    def start_requester(
        self,
        timeout: float = 60.0,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> Stack:
        """`hive-requester run` with `args` added and `env` on top of a clean environment."""
        self.metrics_port = free_port()
        cmd = [
            str(BIN / "hive-requester"),
            "run",
            "--config",
            str(self.empty_config),
            "--nats-url",
            self.url,
            "--data-dir",
            str(self.tmp / "requester"),
            "--metrics-port",
            str(self.metrics_port),
            "--log-level",
            "WARNING",
            *args,
        ]
        with self._req_log.open("wb") as out:
            self.requester = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(HIVE_HEALTH_CHECK_INTERVAL="1s", **(env or {})),
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.requester.poll() is not None:
                raise RuntimeError(
                    f"requester exited with {self.requester.returncode}:\n{self.requester_log()}"
                )
            with contextlib.suppress(OSError):
                self.scrape(timeout=1.0)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"requester not ready in {timeout:.0f}s:\n{self.requester_log()}"
                )
            time.sleep(0.1)
        extra = f", {' '.join(args)}" if args else ""
        log(f"requester ready (pid {self.requester.pid}, metrics :{self.metrics_port}{extra})")
        return self

    def requester_log(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._req_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def requester_alive(self) -> bool:
        return self.requester is not None and self.requester.poll() is None

    def scrape(self, timeout: float = 10.0, *, port: int = 0) -> Metrics:
        url = f"http://127.0.0.1:{port or self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return Metrics(response.read().decode())

    def stop_requester(self) -> None:
        proc, self.requester = self.requester, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        try:
            self.stop_requester()
        finally:
            if self.nats is not None:
                self.nats.stop()
                self.nats = None
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CpuMeter:
    """CPU seconds and RSS of one process between two points in time."""

    def __init__(self, pid: int | None) -> None:
        import psutil

        self.proc = psutil.Process(pid) if pid else None
        self.t0 = time.monotonic()
        self.c0 = self._cpu()
        self.max_rss = 0

    def _cpu(self) -> float:
        if self.proc is None:
            return 0.0
        try:
            t = self.proc.cpu_times()
            return float(t.user + t.system)
        except Exception:
            return 0.0

    def rss(self) -> int:
        if self.proc is None:
            return 0
        try:
            value = int(self.proc.memory_info().rss)
        except Exception:
            return 0
        self.max_rss = max(self.max_rss, value)
        return value

    def read(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        cpu = self._cpu() - self.c0
        rss = self.rss()
        return {
            "cpu_s": round(cpu, 2),
            "wall_s": round(wall, 2),
            "cpu_pct_of_one_core": round(100 * cpu / wall, 1) if wall > 0 else None,
            "rss_mib": round(rss / 2**20, 1),
            "max_rss_mib": round(self.max_rss / 2**20, 1),
        }


# -- worker processes ------------------------------------------------------------------------
class Control:
    """The worker's end of its pipe: say ready, wait for go, send the result."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn

    def ready_then_wait(self) -> None:
        self.conn.send(("ready", None))
        message = self.conn.recv()
        if message != "go":
            raise SystemExit(0)


def _worker_main(
    target: Target,
    conn: multiprocessing.connection.Connection,
    args: tuple[Any, ...],
) -> None:
    _die_with_parent()
    try:
        result = asyncio.run(target(Control(conn), *args))
        conn.send(("done", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Worker:
    """One worker process running an async target from this module."""

    def __init__(self, target: Target, *args: Any, name: str):
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(target, child, args), name=name)
        self.proc.daemon = True
        self.proc.start()
        child.close()
        self._result: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def _recv(self, timeout: float) -> tuple[str, Any]:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"worker {self.name}: nothing within {timeout:.0f}s")
        try:
            kind, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"worker {self.name} died (exit {self.proc.exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"worker {self.name} failed:\n{value}")
        return kind, value

    def wait_ready(self, timeout: float = 60.0) -> None:
        kind, _ = self._recv(timeout)
        assert kind == "ready", kind

    def go(self) -> None:
        self.conn.send("go")

    def done(self) -> bool:
        return self._result is not None or self.conn.poll(0)

    def result(self, timeout: float) -> dict[str, Any]:
        if self._result is None:
            kind, value = self._recv(timeout)
            assert kind == "done", kind
            self._result = value
            self.proc.join(10)
        return self._result

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()


def start_together(workers: Iterable[Worker], timeout: float = 60.0) -> float:
    """Wait until every worker is connected, then release them at once; the start time."""
    workers = list(workers)
    for worker in workers:
        worker.wait_ready(timeout)
    t0 = time.monotonic()
    for worker in workers:
        worker.go()
    return t0


def stop_all(workers: Iterable[Worker]) -> None:
    for worker in workers:
        worker.stop()


# -- what a simulated node sends ---------------------------------------------------------------
def heartbeat_frame(node_id: str, seq: int, key: bytes) -> bytes:
    """A real heartbeat: encoded with the codec, sealed with the node's MAC key."""
    from hivectl.core import auth, codec
    from hivectl.core.models import Heartbeat

    return auth.seal(codec.encode(Heartbeat(node_id=node_id, seq=seq)), key)


def seq_base() -> int:
    """Sequence numbers start at the current time in µs, so every run moves them forward."""
    return time.time_ns() // 1000


def node_ids(count: int, prefix: str = "sim") -> list[str]:
    width = max(5, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


async def _connect(url: str, name: str) -> tuple[Any, Counter[str]]:
    """A plain nats-py connection, and a count of the errors its callback saw."""
    import nats

    errors: Counter[str] = Counter()

    async def on_error(exc: Exception) -> None:
        errors[type(exc).__name__] += 1

    nc = await nats.connect(
        url,
        name=name,
        error_cb=on_error,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        pending_size=8 * 1024 * 1024,
    )
    return nc, errors


# -- worker targets ---------------------------------------------------------------------------
async def register_nodes(
    ctl: Control,
    url: str,
    ids: list[str],
    in_flight: int,
    report: bool,
    timeout: float,
) -> dict[str, Any]:
    """Register `ids` (signed requests, `in_flight` at once); the MAC key of each.

    With `report`, each registered node also sends one heartbeat and one resource
    report, so its row in `node list` is complete.
    """
    from nats.errors import TimeoutError as NatsTimeout

    from hivectl.core import auth, codec
    from hivectl.core.models import (
        ErrorReply,
        Heartbeat,
        NodeInfo,
        NodeResources,
        RegisterReply,
        RegisterRequest,
        Resources,
        ResourceUpdate,
    )
    from hivectl.core.subjects import Subjects

    subjects = Subjects(PREFIX)
    nc, _ = await _connect(url, f"bench-register-{os.getpid()}")
    total = Resources(cpu=4.0, memory=8 * 2**30, disk=100 * 2**30, gpu=0)
    free = Resources(cpu=3.5, memory=6 * 2**30, disk=80 * 2**30, gpu=0)
    errors: Counter[str] = Counter()
    keys: list[NodeKey] = []
    latencies: list[float] = []
    sem = asyncio.Semaphore(in_flight)
    retries = 0
    await nc.flush()
    ctl.ready_then_wait()
    t0 = time.monotonic()
    next_note = t0 + 10

    async def one(index: int, node_id: str) -> None:
        nonlocal retries, next_note
        async with sem:
            identity = auth.Identity.generate()
            info = NodeInfo(
                hostname=node_id,
                arch="x86_64",
                os="linux",
                version="0.1.0",
                labels={"zone": f"z{index % 4}", "bench": "sim"},
                executors=["docker"],
                total=total,
                allocatable=total,
            )
            request = RegisterRequest(node_id=node_id, public_key=identity.public_key, info=info)
            frame = identity.sign(codec.encode(request))
            for attempt in range(4):
                started = time.monotonic()
                try:
                    reply = await nc.request(subjects.node_register, frame, timeout=timeout)
                except (NatsTimeout, TimeoutError):
                    retries += 1
                    if attempt == 3:
                        errors["timeout"] += 1
                        return
                    continue
                latencies.append(time.monotonic() - started)
                answer = codec.decode(reply.data, (RegisterReply, ErrorReply))
                if isinstance(answer, ErrorReply):
                    errors[answer.code] += 1
                    return
                assert isinstance(answer, RegisterReply)
                key = identity.message_key(answer.requester_key)
                keys.append((node_id, key))
                break
            if report:
                seq = seq_base()
                beat = Heartbeat(node_id=node_id, seq=seq)
                await nc.publish(
                    subjects.node_heartbeat(node_id), auth.seal(codec.encode(beat), key)
                )
                update = ResourceUpdate(
                    node_id=node_id,
                    seq=seq,
                    resources=NodeResources(total=total, allocatable=total, available=free),
                )
                await nc.publish(
                    subjects.node_resources(node_id), auth.seal(codec.encode(update), key)
                )
            now = time.monotonic()
            if now >= next_note:
                next_note = now + 10
                log(f"  [{os.getpid()}] registered {len(keys)}/{len(ids)} in {now - t0:.0f}s")

    await asyncio.gather(*(one(i, node_id) for i, node_id in enumerate(ids)))
    await nc.flush(timeout=60)
    elapsed = time.monotonic() - t0
    await nc.close()
    return {
        "keys": keys,
        "errors": dict(errors),
        "retries": retries,
        "t_start": t0,
        "elapsed_s": elapsed,
        "latency_s": summary(latencies),
    }


async def send_heartbeats(
    ctl: Control,
    url: str,
    nodes: list[NodeKey | None],
    rate: float | None,
    duration: float,
    tick: float = 0.01,
    subject_prefix: str = PREFIX,
) -> dict[str, Any]:
    """Send real heartbeats round-robin over `nodes` for `duration` seconds.

    `rate` msgs/s paces them (the k-th is due at k/rate, sent in batches every `tick`
    seconds; a None entry is a slot whose beat is skipped, so with rate = len(nodes) /
    interval node i beats at i*interval/len(nodes) + j*interval). `rate=None` blasts:
    as fast as this process can build and publish them.
    """
    from hivectl.core import auth, codec
    from hivectl.core.models import Heartbeat

    nc, nc_errors = await _connect(url, f"bench-heartbeats-{os.getpid()}")
    count = len(nodes)
    subjects = [f"{subject_prefix}.node.{n[0]}.heartbeat" if n else "" for n in nodes]
    base = seq_base()
    seqs = [base] * count
    publish = nc.publish
    seal, encode = auth.seal, codec.encode
    sent = 0
    batch_lateness: list[float] = []
    late_over_1s = 0
    await nc.flush()
    ctl.ready_then_wait()
    t0 = time.monotonic()
    cpu0 = time.process_time()
    t_first = t_last = 0.0

    async def send(k: int) -> bool:
        i = k % count
        node = nodes[i]
        if node is None:
            return False
        seqs[i] += 1
        frame = seal(encode(Heartbeat(node_id=node[0], seq=seqs[i])), node[1])
        await publish(subjects[i], frame)
        return True

    k = 0
    if rate is None:
        end = t0 + duration
        while time.monotonic() < end:
            for _ in range(256):
                sent += await send(k)
                k += 1
            await asyncio.sleep(0)  # let the flusher write
        t_first, t_last = t0, time.monotonic()
    else:
        total = int(rate * duration)
        while k < total:
            now = time.monotonic() - t0
            due = min(total, int(now * rate) + 1)
            if due > k:
                lateness = now - k / rate
                batch_lateness.append(lateness)
                late_over_1s += lateness > 1.0
                for j in range(k, due):
                    sent += await send(j)
                if not t_first:
                    t_first = t0 + now
                k = due
                t_last = time.monotonic()
            wait = min(tick, (k / rate) - (time.monotonic() - t0))
            await asyncio.sleep(max(0.0, wait))
    await nc.flush(timeout=60)
    t_flushed = time.monotonic()
    cpu_s = time.process_time() - cpu0
    errors = dict(nc_errors)
    await nc.close()
    span = max(t_last - t_first, 1e-9)
    return {
        "sent": sent,
        "t_first": t_first,
        "t_last": t_last,
        "t_flushed": t_flushed,
        "cpu_s": cpu_s,
        "send_rate": sent / span,
        "lateness_s": summary(batch_lateness),
        "batches_late_over_1s": late_over_1s,
        "errors": errors,
    }


async def count_messages(
    ctl: Control, url: str, subject: str, idle: float, limit: float
) -> dict[str, Any]:
    """A plain nats-py callback subscriber that only counts: the raw receive baseline.

    Same pending limits as the requester's heartbeat subscription. Stops `idle` seconds
    after the last message, or at `limit` seconds after go.
    """
    nc, nc_errors = await _connect(url, f"bench-counter-{os.getpid()}")
    n = 0
    first = last = 0.0

    async def count(msg: Any) -> None:
        nonlocal n, first, last
        last = time.monotonic()
        if not n:
            first = last
        n += 1

    sub = await nc.subscribe(
        subject, cb=count, pending_msgs_limit=1_000_000, pending_bytes_limit=512 * 1024 * 1024
    )
    await nc.flush()
    ctl.ready_then_wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        await asyncio.sleep(0.05)
        if n and time.monotonic() - last > idle:
            break
    errors = dict(nc_errors)
    await sub.unsubscribe()
    await nc.close()
    return {
        "received": n,
        "t_first": first,
        "t_last": last,
        "slow_consumer_drops": errors.get("SlowConsumerError", 0),
        "errors": errors,
    }


def register(
    url: str,
    count: int,
    *,
    procs: int = 2,
    in_flight: int = 200,
    report: bool = False,
    timeout: float = 30.0,
    id_prefix: str = "sim",
) -> dict[str, Any]:
    """Register `count` sim nodes from `procs` worker processes; keys in id order."""
    ids = node_ids(count, id_prefix)
    procs = max(1, min(procs, count))
    shards = [ids[i::procs] for i in range(procs)]
    per = max(1, in_flight // procs)
    workers = [
        Worker(register_nodes, url, shard, per, report, timeout, name=f"register-{i}")
        for i, shard in enumerate(shards)
    ]
    try:
        t0 = start_together(workers)
        results = [w.result(timeout=3600) for w in workers]
    finally:
        stop_all(workers)
    elapsed = time.monotonic() - t0
    got = dict(kv for r in results for kv in r["keys"])
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    keys = [(node_id, got[node_id]) for node_id in ids if node_id in got]
    return {
        "keys": keys,
        "registered": len(keys),
        "failed": count - len(keys),
        "errors": dict(errors),
        "retries": sum(r["retries"] for r in results),
        "elapsed_s": round(elapsed, 2),
        "rate_per_s": round(len(keys) / elapsed, 1) if elapsed > 0 else None,
        "latency_s": [r["latency_s"] for r in results],
        "procs": procs,
        "in_flight": per * procs,
    }


if __name__ == "__main__":
    print("bench/_sim.py is the benchmarks' helper module; nothing to run.", file=sys.stderr)
    sys.exit(0)
