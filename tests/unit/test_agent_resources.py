"""Resources, GPUs and the CPU benchmark the node agent reports."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

import hivectl
from hivectl.core.config import NodeAgentConfig
from hivectl.core.models import NodeInfo, Resources
from nodeagent import resources
from nodeagent.resources import (
    BENCHMARK_FILE,
    available_resources,
    collect_info,
    collect_resources,
    discover_gpus,
    load_or_measure_benchmark,
    measure_cpu_benchmark,
    total_resources,
)


def _config(tmp_path: Path, **values: Any) -> NodeAgentConfig:
    return NodeAgentConfig(name="node-1", state_dir=tmp_path / "state", **values)


def test_benchmark_measured_once_and_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def fake_measure(seconds: float = 0.25) -> float:
        calls.append(seconds)
        return 123.4

    monkeypatch.setattr(resources, "measure_cpu_benchmark", fake_measure)
    assert load_or_measure_benchmark(tmp_path) == 123.4
    assert load_or_measure_benchmark(tmp_path) == 123.4
    assert len(calls) == 1
    stored = json.loads((tmp_path / BENCHMARK_FILE).read_text())
    assert stored["score"] == 123.4
    assert "measured_at" in stored


def test_corrupt_benchmark_is_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / BENCHMARK_FILE).write_text("{oops")
    monkeypatch.setattr(resources, "measure_cpu_benchmark", lambda seconds=0.25: 7.0)
    assert load_or_measure_benchmark(tmp_path) == 7.0
    assert json.loads((tmp_path / BENCHMARK_FILE).read_text())["score"] == 7.0


def test_real_benchmark_is_positive() -> None:
    assert measure_cpu_benchmark(0.02) > 0


def _raise_nvml(*_: Any) -> Any:
    raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def test_no_nvml_library_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlInit", _raise_nvml)
    assert discover_gpus() == []
    assert discover_gpus() == []  # cheap and quiet the second time too


def test_nvml_failure_after_init_still_shuts_down(monkeypatch: pytest.MonkeyPatch) -> None:
    shutdowns: list[int] = []
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", _raise_nvml)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: shutdowns.append(1))
    assert discover_gpus() == []
    assert shutdowns == [1]


def test_gpus_read_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    shutdowns: list[int] = []
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: shutdowns.append(1))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 2)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetIndex", lambda h: h)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: b"NVIDIA H100")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda h: f"GPU-{h}")
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetMemoryInfo", lambda h: SimpleNamespace(total=80 * 2**30)
    )
    gpus = discover_gpus()
    assert [(g.index, g.model, g.uuid, g.memory) for g in gpus] == [
        (0, "NVIDIA H100", "GPU-0", 80 * 2**30),
        (1, "NVIDIA H100", "GPU-1", 80 * 2**30),
    ]
    assert shutdowns == [1]


def test_real_discovery_never_raises() -> None:
    assert isinstance(discover_gpus(), list)


def test_totals_are_sane(tmp_path: Path) -> None:
    total = total_resources(tmp_path / "work", [])
    assert (tmp_path / "work").is_dir()
    assert total.cpu >= 1 and total.memory > 0 and total.disk > 0 and total.gpu == 0


def test_available_never_exceeds_allocatable(tmp_path: Path) -> None:
    total = total_resources(tmp_path, [])
    available = available_resources(total, tmp_path)
    assert total.fits(available)
    assert available.cpu == total.cpu
    assert min(available.memory, available.disk, available.gpu) >= 0
    small = Resources(cpu=1.0, memory=10, disk=10, gpu=0)
    assert available_resources(small, tmp_path) == small


def test_info_describes_the_node(tmp_path: Path) -> None:
    cfg = _config(tmp_path, labels={"zone": "a"})
    cfg.executors.process.enabled = True
    cfg.executors.docker.host = f"unix://{tmp_path}/no-docker.sock"
    info = collect_info(cfg, 42.0)
    assert NodeInfo.model_validate(info.model_dump()) == info
    assert info.os == "linux" and info.arch and info.hostname
    assert info.version == hivectl.__version__
    assert info.labels == {"zone": "a"}
    # Docker is enabled but its engine is not there: not offered, and the info says why.
    assert info.executors == ["process"]
    assert info.unavailable == {
        "docker": f"cannot reach unix://{tmp_path}/no-docker.sock: No such file or directory"
    }
    assert info.benchmark_score == 42.0
    assert info.total.gpu == len(info.gpus)
    assert info.allocatable == info.total
    assert cfg.resolved_work_dir.is_dir()


def test_docker_off_means_no_docker_executor(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.executors.docker.enabled = False
    info = collect_info(cfg, 0.0)
    assert info.executors == [] and info.unavailable == {}


def test_resource_report_is_sane(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    info = collect_info(cfg, 0.0)
    report = collect_resources(info, cfg.resolved_work_dir)
    assert report.total == info.total
    assert report.allocatable.fits(report.available)
    for res in (report.total, report.allocatable, report.available):
        assert min(res.cpu, res.memory, res.disk, res.gpu) >= 0
