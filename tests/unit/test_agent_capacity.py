"""The capacity ledger: admit and lock, refuse with a reason, release, persist.

How it is stored (snapshot and journal) is tested in test_agent_journal.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

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
    again = Ledger.load(tmp_path, FULL)
    held = again.held["e-1"]
    assert (held.job_id, held.engine, held.handle, held.spec) == ("j-1", "docker", "c0ffee", spec)
    assert again.available == Resources(cpu=3.0, memory=8 * GIB, disk=100 * GIB, gpu=0)
    # Loading starts afresh: everything in the snapshot, which an operator can read.
    data = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert [e["exec_id"] for e in data["executions"]] == ["e-1"]
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


def test_unreadable_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / LEDGER_FILE).write_text("{not json")
    assert Ledger.load(tmp_path, FULL).held == {}
    assert f"ignoring unreadable {tmp_path / LEDGER_FILE}" in caplog.text


def test_at_max_executions_the_node_is_full_until_one_ends(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path, FULL, max_executions=2)
    assert ledger.admit("e-1", Resources()) is None
    assert ledger.admit("e-2", Resources()) is None
    full = "node full: 2 of 2 executions running (max_executions)"
    assert ledger.full() == full
    assert ledger.admit("e-3", Resources()) == full
    assert ledger.admit("e-1", Resources()) is None  # a repeat is no new execution
    ledger.finish("e-1", "COMPLETED", 0, "")  # ended, its report still to go: not running
    assert ledger.full() is None
    assert ledger.admit("e-3", Resources()) is None
    assert Ledger.load(tmp_path, FULL, max_executions=2).running == 2


def test_running_and_locked_follow_every_change(tmp_path: Path) -> None:
    """Kept as totals (read on every offer), they match a sum over the entries."""
    ledger = Ledger.load(tmp_path, FULL)
    rng = random.Random(15)
    for n in range(500):
        exec_id = f"e-{rng.randrange(40)}"
        action = rng.choice(["admit", "admit", "finish", "release"])
        if action == "admit":
            ledger.admit(exec_id, Resources(cpu=rng.choice([0.1, 0.25, 0.3]), memory=n))
        elif action == "finish":
            ledger.finish(exec_id, "COMPLETED", 0, "")
        else:
            ledger.release(exec_id)
        running = [h for h in ledger.held.values() if h.final is None]
        assert ledger.running == len(running)
        assert ledger.locked.cpu == pytest.approx(sum(h.resources.cpu for h in running))
        assert ledger.locked.memory == sum(h.resources.memory for h in running)
    again = Ledger.load(tmp_path, FULL)
    assert (again.running, again.locked) == (ledger.running, ledger.locked)
