"""The capacity ledger: admit and lock, refuse with a reason, release, persist."""

from __future__ import annotations

import json
from pathlib import Path

from hivectl.core.models import Resources
from nodeagent.capacity import LEDGER_FILE, Ledger, shortfall

GIB = 1024**3
FULL = Resources(cpu=4.0, memory=8 * GIB, disk=100 * GIB, gpu=1)


def test_admit_locks_until_release(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path, FULL)
    assert ledger.admit("e-1", Resources(cpu=2.5, memory=GIB), job_id="j-1") is None
    assert ledger.available == Resources(cpu=1.5, memory=7 * GIB, disk=100 * GIB, gpu=1)
    assert ledger.admit("e-2", Resources(cpu=4.0)) == "needs 4 CPU, 1.5 free"
    assert "e-2" not in ledger
    ledger.release("e-1")
    assert ledger.available == FULL
    assert ledger.admit("e-2", Resources(cpu=4.0)) is None


def test_admitting_a_known_exec_again_locks_once(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path, FULL)
    assert ledger.admit("e-1", Resources(cpu=3.0)) is None
    assert ledger.admit("e-1", Resources(cpu=3.0)) is None
    assert ledger.locked.cpu == 3.0


def test_shortfall_names_the_first_missing_resource() -> None:
    free = Resources(cpu=1.0, memory=GIB, disk=GIB, gpu=0)
    assert shortfall(Resources(cpu=1.0, memory=GIB), free) is None
    assert shortfall(Resources(memory=2 * GIB), free) == "needs 2GiB memory, 1GiB free"
    assert shortfall(Resources(disk=3 * GIB), free) == "needs 3GiB disk, 1GiB free"
    assert shortfall(Resources(gpu=1), free) == "needs 1 GPU, 0 free"


def test_persisted_with_the_executions(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path, FULL)
    spec = {"engine": "docker", "image": "busybox", "outputs": ["/out"]}
    ledger.admit("e-1", Resources(cpu=1.0, gpu=1), job_id="j-1", engine="docker", spec=spec)
    ledger.set_handle("e-1", "c0ffee")
    data = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert [e["exec_id"] for e in data["executions"]] == ["e-1"]
    again = Ledger.load(tmp_path, FULL)
    held = again.held["e-1"]
    assert (held.job_id, held.engine, held.handle, held.spec) == ("j-1", "docker", "c0ffee", spec)
    assert again.available == Resources(cpu=3.0, memory=8 * GIB, disk=100 * GIB, gpu=0)
    again.release("e-1")
    assert Ledger.load(tmp_path, FULL).held == {}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_a_finished_execution_frees_its_lock_but_keeps_its_outcome_until_released(
    tmp_path: Path,
) -> None:
    """Between an execution's end and its report getting out, a crash must lose nothing."""
    ledger = Ledger.load(tmp_path, FULL)
    ledger.admit("e-1", Resources(cpu=3.0), job_id="j-1", engine="process")
    ledger.finish("e-1", "COMPLETED", 0, "")
    assert ledger.available == FULL  # the next job may have the room at once
    again = Ledger.load(tmp_path, FULL)
    assert again.held["e-1"].final == {"state": "COMPLETED", "exit_code": 0, "error": ""}
    assert again.available == FULL
    again.release("e-1")
    assert Ledger.load(tmp_path, FULL).held == {}


def test_unreadable_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILE).write_text("{not json")
    assert Ledger.load(tmp_path, FULL).held == {}
