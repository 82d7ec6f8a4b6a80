"""What this machine has: CPU, memory, disk, GPUs, and a CPU benchmark score.

Everything here is cheap enough to call on every info or resource update (the Docker
engine check is one ping with a short timeout; callers run it off the event loop),
except the benchmark, which runs once per state dir and is then read back: a score that
changed on every restart would make the requester rewrite the node's record for nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pynvml

import hivectl
from hivectl.core.config import NodeAgentConfig
from hivectl.core.models import GpuInfo, NodeInfo, NodeResources, Resources, utcnow
from nodeagent.executors.docker import engine_problem

log = logging.getLogger("hive.nodeagent")

BENCHMARK_FILE = "benchmark.json"
BENCHMARK_SECONDS = 0.25
_BENCHMARK_BLOCK = 64 * 1024
_TEXT_LIMIT = 256  # ShortText in the wire models
EXECUTIONS_PER_CORE = 8  # the default max_executions, per CPU core

_gpu_failure_logged = False


def discover_gpus() -> list[GpuInfo]:
    """The NVIDIA GPUs NVML reports; [] when there is no driver, library or device.

    A machine without GPUs is the normal case, so the failure is logged once, at debug.
    """
    global _gpu_failure_logged
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, driver errors, OSError
        if not _gpu_failure_logged:
            log.debug("no NVIDIA GPUs: %s", exc or type(exc).__name__)
            _gpu_failure_logged = True
        return []
    try:
        return [_gpu(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:
        if not _gpu_failure_logged:
            log.debug("cannot read NVIDIA GPUs: %s", exc or type(exc).__name__)
            _gpu_failure_logged = True
        return []
    finally:
        _nvml_shutdown()


def _gpu(position: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(position)
    return GpuInfo(
        index=int(pynvml.nvmlDeviceGetIndex(handle)),
        vendor="nvidia",
        model=_text(pynvml.nvmlDeviceGetName(handle)),
        memory=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
    )


def _text(value: Any) -> str:
    # pynvml returns bytes or str depending on its version.
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return text[:_TEXT_LIMIT]


def _nvml_shutdown() -> None:
    try:
        pynvml.nvmlShutdown()
    except Exception as exc:  # shutting down must never turn a result into a failure
        log.debug("nvmlShutdown failed: %s", exc)


def measure_cpu_benchmark(seconds: float = BENCHMARK_SECONDS) -> float:
    """Single-core SHA-256 throughput in MB/s: a rough, comparable CPU score."""
    block = bytes(range(256)) * (_BENCHMARK_BLOCK // 256)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        hashlib.sha256(block).digest()
        done += len(block)
        now = time.perf_counter()
        if now >= deadline:
            return round(done / (now - started) / 1e6, 1)


def load_or_measure_benchmark(state_dir: Path) -> float:
    """The score stored in `state_dir`, measuring and storing it on first use."""
    path = state_dir / BENCHMARK_FILE
    try:
        score = float(json.loads(path.read_text())["score"])
        if score >= 0:
            return score
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s (%s); measuring again", path, exc)
    score = measure_cpu_benchmark()
    state_dir.mkdir(parents=True, exist_ok=True)
    record = {"score": score, "measured_at": utcnow().isoformat(timespec="seconds")}
    path.write_text(json.dumps(record) + "\n")
    log.info("CPU benchmark: %.1f MB/s (stored in %s)", score, path)
    return score


def total_resources(work_dir: Path, gpus: list[GpuInfo]) -> Resources:
    """What the machine has; disk is the filesystem that holds the work dir."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return Resources(
        cpu=float(psutil.cpu_count() or 1),
        memory=int(psutil.virtual_memory().total),
        disk=int(psutil.disk_usage(str(work_dir)).total),
        gpu=len(gpus),
    )


def available_resources(
    allocatable: Resources, work_dir: Path, locked: Resources | None = None
) -> Resources:
    """What is free now: allocatable minus what running executions hold (`locked`).

    Memory and disk are also capped by the machine's real free figures, which account
    for anything else running there. CPU and GPUs are only what the locks leave: load
    average swings from second to second and would make scheduling flap.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    unlocked = allocatable.minus(locked or Resources())
    return Resources(
        cpu=unlocked.cpu,
        memory=min(unlocked.memory, int(psutil.virtual_memory().available)),
        disk=min(unlocked.disk, int(psutil.disk_usage(str(work_dir)).free)),
        gpu=unlocked.gpu,
    )


def executors(cfg: NodeAgentConfig) -> tuple[list[str], dict[str, str]]:
    """The executors that can run jobs now, and those enabled that cannot, with why.

    Docker is only as good as its engine: one that does not answer is not advertised
    (nothing would run there), and the next info update brings it back once it does.
    """
    usable: list[str] = []
    unavailable: dict[str, str] = {}
    if cfg.executors.docker.enabled:
        problem = engine_problem(cfg.executors.docker)
        if problem is None:
            usable.append("docker")
        else:
            unavailable["docker"] = problem[:_TEXT_LIMIT]
    if cfg.executors.process.enabled:
        usable.append("process")
    return usable, unavailable


def execution_limit(cfg: NodeAgentConfig, total: Resources) -> int:
    """The node's max_executions: as configured, else 8 per CPU core. Enough to keep
    the cores busy with jobs that wait on I/O or sleep, and short jobs coming and going
    (a batch of 2,000 `true` on two 2-core agents: 321/s at 4 per core, 406/s at 8, in
    one run of bench/batch.py), few enough that a burst of jobs asking for nothing
    cannot swamp the agent (one process or container, log stream and set of reports
    each) or the machine."""
    if cfg.max_executions is not None:
        return cfg.max_executions
    return EXECUTIONS_PER_CORE * max(1, math.ceil(total.cpu))


def collect_info(cfg: NodeAgentConfig, benchmark_score: float) -> NodeInfo:
    """This node's info as it is sent at registration and on every info update."""
    gpus = discover_gpus()
    total = total_resources(cfg.resolved_work_dir, gpus)
    usable, unavailable = executors(cfg)
    return NodeInfo(
        hostname=socket.gethostname()[:_TEXT_LIMIT],
        arch=platform.machine()[:_TEXT_LIMIT],
        os="linux",
        version=hivectl.__version__,
        labels=dict(cfg.labels),
        executors=usable,
        unavailable=unavailable,
        total=total,
        allocatable=total,  # reservations for the OS and the agent come with capacity.py
        gpus=gpus,
        benchmark_score=benchmark_score,
        max_executions=execution_limit(cfg, total),
    )


def collect_resources(
    info: NodeInfo, work_dir: Path, locked: Resources | None = None
) -> NodeResources:
    """A resource report built on the totals of the latest info and the ledger's locks."""
    return NodeResources(
        total=info.total,
        allocatable=info.allocatable,
        available=available_resources(info.allocatable, work_dir, locked),
    )
