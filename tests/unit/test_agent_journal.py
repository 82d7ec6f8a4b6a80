"""The ledger on disk: a snapshot plus an append-only journal, one line per change.

What a restarted agent finds must be what the agent had, whatever moment it died at:
mid-line, mid-compaction, or with a file damaged on disk. And a burst of offers must
cost the same per offer at the end as at the start (issue #15).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from hivectl.core.models import Resources
from nodeagent import journal
from nodeagent.capacity import COMPACT_AFTER, COMPACT_FACTOR, LEDGER_FILE, Ledger

GIB = 1024**3
FULL = Resources(cpu=4000.0, memory=8000 * GIB, disk=100 * GIB, gpu=1)
SPEC = {"engine": "process", "command": ["sleep", "1"], "env": {"A": "1" * 200}}


def state(ledger: Ledger) -> dict[str, Any]:
    return {exec_id: held.to_json() for exec_id, held in ledger.held.items()}


def journal_files(state_dir: Path) -> list[Path]:
    return [path for _, path in journal.journals(state_dir)]


def churn(ledger: Ledger, start: int, count: int) -> None:
    """`count` executions admitted, given a handle, finished; every other one released."""
    for n in range(start, start + count):
        exec_id = f"e-{n}"
        assert ledger.admit(exec_id, Resources(cpu=0.5), job_id="j-1", spec=SPEC) is None
        ledger.set_handle(exec_id, str(1000 + n))
        ledger.finish(exec_id, "COMPLETED", 0, "")
        if n % 2 == 0:
            ledger.release(exec_id)


def test_every_change_survives_a_restart(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path, FULL)
    ledger.admit("e-1", Resources(cpu=1.0), job_id="j-1", engine="process", spec=SPEC)
    ledger.admit("e-2", Resources(cpu=2.0), job_id="j-1", engine="docker")
    ledger.admit("e-3", Resources(memory=GIB), job_id="j-2", engine="process")
    ledger.set_handle("e-2", "c0ffee")
    ledger.finish("e-1", "FAILED", 3, "exit code 3")
    ledger.release("e-3")
    again = Ledger.load(tmp_path, FULL)
    assert state(again) == state(ledger)
    assert again.held["e-1"].final == {"state": "FAILED", "exit_code": 3, "error": "exit code 3"}
    assert (again.running, again.locked) == (1, Resources(cpu=2.0))


def test_a_change_is_one_line_in_the_journal(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path, FULL)
    snapshot = (tmp_path / LEDGER_FILE).read_text()
    ledger.admit("e-1", Resources(cpu=1.0), spec=SPEC)
    ledger.set_handle("e-1", "42")
    ledger.release("e-1")
    (current,) = journal_files(tmp_path)
    ops = [json.loads(line)["op"] for line in current.read_text().splitlines()]
    assert ops == ["admit", "handle", "release"]
    assert (tmp_path / LEDGER_FILE).read_text() == snapshot  # not rewritten


def test_a_torn_last_line_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash in mid-write leaves half a line: what came before it all counts."""
    ledger = Ledger.load(tmp_path, FULL)
    ledger.admit("e-1", Resources(cpu=1.0), spec=SPEC)
    ledger.admit("e-2", Resources(cpu=1.0), spec=SPEC)
    (current,) = journal_files(tmp_path)
    with current.open("a") as f:
        f.write('{"op":"release","exec_')
    again = Ledger.load(tmp_path, FULL)
    assert set(again.held) == {"e-1", "e-2"}
    assert f"ledger journal {current}: ignoring a torn last line" in caplog.text
    # Loading started a new journal: the next line is not glued to the torn one.
    again.release("e-1")
    caplog.clear()
    assert set(Ledger.load(tmp_path, FULL).held) == {"e-2"}
    assert "ignoring" not in caplog.text


def test_a_damaged_line_is_skipped_and_the_rest_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger.load(tmp_path, FULL)
    ledger.admit("e-1", Resources(cpu=1.0))
    ledger.admit("e-2", Resources(cpu=1.0))
    ledger.release("e-2")
    (current,) = journal_files(tmp_path)
    lines = current.read_text().splitlines()
    lines[1] = "\x00\x00garbage"  # e-2's admit
    lines.insert(1, '{"op": "admit", "entry": {"exec_id": "e-9"}}')  # no resources
    current.write_text("\n".join(lines) + "\n")
    again = Ledger.load(tmp_path, FULL)
    assert set(again.held) == {"e-1"}
    assert "ignoring unreadable line 3" in caplog.text
    assert "skipping a malformed change ('job_id')" in caplog.text


def test_an_unreadable_snapshot_means_an_empty_ledger_whatever_the_journal_says(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal only holds changes to a snapshot nobody can read any more."""
    ledger = Ledger.load(tmp_path, FULL)
    ledger.admit("e-1", Resources(cpu=1.0))
    (tmp_path / LEDGER_FILE).write_text('{"executions": [{"broken')
    again = Ledger.load(tmp_path, FULL)
    assert again.held == {} and again.available == FULL
    assert f"ignoring unreadable {tmp_path / LEDGER_FILE}" in caplog.text
    assert "starting with an empty ledger" in caplog.text
    again.admit("e-2", Resources(cpu=1.0))
    assert set(Ledger.load(tmp_path, FULL).held) == {"e-2"}


def test_a_ledger_from_before_the_journal_loads(tmp_path: Path) -> None:
    """What an older agent wrote: the whole ledger, indented, no journal generation."""
    entry = {
        "exec_id": "e-1",
        "job_id": "j-1",
        "engine": "process",
        "resources": {"cpu": 1.5, "memory": 0, "disk": 0, "gpu": 0},
        "handle": "4242",
        "started": "2025-01-01T00:00:00+00:00",
        "spec": SPEC,
        "final": None,
    }
    (tmp_path / LEDGER_FILE).write_text(json.dumps({"executions": [entry]}, indent=2))
    ledger = Ledger.load(tmp_path, FULL)
    assert state(ledger) == {"e-1": entry}
    assert ledger.locked == Resources(cpu=1.5)


def test_compaction_keeps_everything_and_bounds_the_files(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path, FULL)
    churn(ledger, 0, 3 * COMPACT_AFTER)  # 4 changes each: several compactions
    assert ledger.journal.generation >= 4
    (current,) = journal_files(tmp_path)  # the older ones went with their compaction
    bound = max(COMPACT_AFTER, COMPACT_FACTOR * len(ledger.held))
    assert len(current.read_text().splitlines()) <= bound + 1
    assert state(Ledger.load(tmp_path, FULL)) == state(ledger)
    assert len(ledger.held) == 3 * COMPACT_AFTER // 2


async def test_changes_made_while_a_compaction_runs_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot is written in a thread while offers keep coming: a crash before it
    lands, or after, loses none of them."""
    agent, crash = tmp_path / "agent", tmp_path / "crash"
    ledger = Ledger.load(agent, FULL)
    go, writing = threading.Event(), threading.Event()
    real = journal.write_snapshot

    def held_back(state_dir: Path, *args: Any) -> None:
        if state_dir == agent:
            writing.set()
            assert go.wait(10)
        real(state_dir, *args)

    monkeypatch.setattr(journal, "write_snapshot", held_back)
    churn(ledger, 0, COMPACT_AFTER // 3 + 1)  # past COMPACT_AFTER changes
    assert ledger.journal.compacting is not None
    assert await asyncio.to_thread(writing.wait, 10)
    churn(ledger, 10_000, 50)  # meanwhile
    ledger.release("e-1")
    # Killed now, it leaves the old snapshot, the old journal and the new one.
    assert len(journal_files(agent)) == 2
    shutil.copytree(agent, crash)
    assert state(Ledger.load(crash, FULL)) == state(ledger)
    go.set()
    await ledger.journal.settle()
    assert ledger.journal.compacting is None
    churn(ledger, 20_000, 10)
    assert len(journal_files(agent)) == 1
    await ledger.close()
    assert state(Ledger.load(agent, FULL)) == state(ledger)


def test_a_burst_of_admits_costs_the_same_per_admit_at_the_end(tmp_path: Path) -> None:
    """Issue #15: each admit rewrote the whole ledger. Now the bytes written for the
    second thousand admits are those of the first, and no snapshot is rewritten."""
    ledger = Ledger.load(tmp_path, FULL)
    snapshot = (tmp_path / LEDGER_FILE).stat()

    def admits(start: int) -> int:
        before = written()
        for n in range(start, start + 1000):
            assert ledger.admit(f"e-{n}", Resources(cpu=1.0), job_id="j-1", spec=SPEC) is None
        return written() - before

    first, second = admits(0), admits(1000)
    assert second <= first * 1.1, (first, second)
    (current,) = journal_files(tmp_path)
    assert len(current.read_text().splitlines()) == 2000
    assert second <= current.stat().st_size  # only the journal lines, nothing more
    after = (tmp_path / LEDGER_FILE).stat()
    assert (after.st_ino, after.st_mtime_ns) == (snapshot.st_ino, snapshot.st_mtime_ns)


def written() -> int:
    """Bytes this process has handed to write() so far (Linux's /proc/self/io wchar)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])
