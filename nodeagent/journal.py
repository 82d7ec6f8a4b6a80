"""The ledger on disk: a snapshot plus an append-only journal of the changes since.

Rewriting every execution on every change made a burst of offers quadratic (issue #15:
500 admits rewrote a growing file 500 times, fsync included, on the event loop, and the
agent stopped heartbeating). A change now costs one appended JSON line, whatever the
ledger holds. The journal is compacted into the snapshot once it grows past a few times
the live entries, so a compaction's O(n) is spread over the O(n) changes before it.

Files in the state dir:
- `executions.json`: `{"journal": G, "executions": [...]}`, written atomically (temp
  file, fsync, rename). Files from agents before the journal have no `journal` key
  (generation 0) and load as they are.
- `executions.<G>.jsonl`: the changes since the snapshot that names generation G, and
  any later generation: a compaction switches appends to a new generation first, then
  writes the snapshot of everything up to the switch off the event loop, then deletes
  the older journals. A crash at any point leaves the old snapshot with every journal
  it needs, or the new one with its own.

Replaying is idempotent (each change sets something, none adds to it), so a snapshot
that already holds some of the changes its journal replays loads to the same state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("hive.nodeagent")

SNAPSHOT = "executions.json"
_JOURNAL = re.compile(r"executions\.(\d+)\.jsonl")

Record = dict[str, Any]


class Unreadable(ValueError):
    """The snapshot cannot be read: nothing it stands for can be trusted."""


def read(state_dir: Path) -> tuple[list[Record], list[Record]]:
    """The snapshot's entries and the journal's changes since, in order.

    A missing snapshot is an empty one. An unreadable snapshot raises `Unreadable` (its
    journals change entries nobody can see). An unreadable journal line is skipped with
    a warning: a torn last line is what a crash in mid-write leaves.
    """
    path = state_dir / SNAPSHOT
    try:
        data = json.loads(path.read_text())
        entries = data["executions"]
        generation = int(data.get("journal", 0))
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise TypeError("executions is not a list of objects")
    except FileNotFoundError:
        entries, generation = [], 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Unreadable(f"unreadable {path}: {exc}") from None
    changes: list[Record] = []
    for gen, journal in journals(state_dir):
        if gen >= generation:
            changes.extend(_changes(journal))
    return entries, changes


def journals(state_dir: Path) -> list[tuple[int, Path]]:
    """Every journal in `state_dir`, oldest generation first."""
    found = []
    for path in state_dir.glob("executions.*.jsonl"):
        match = _JOURNAL.fullmatch(path.name)
        if match:
            found.append((int(match[1]), path))
    return sorted(found)


def _changes(path: Path) -> list[Record]:
    try:
        text = path.read_bytes().decode(errors="replace")
    except OSError as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return []
    lines = text.split("\n")
    changes = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            change = json.loads(line)
            if not isinstance(change, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            torn = number == len(lines)  # no newline after it: cut short in mid-write
            what = "a torn last line" if torn else f"unreadable line {number}"
            log.warning("ledger journal %s: ignoring %s (%s)", path, what, exc)
            continue
        changes.append(change)
    return changes


class Journal:
    """Appends changes to the current generation's file; compacts into the snapshot."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.generation = 0
        self.appended = 0  # changes in the current generation's file
        self.compacting: asyncio.Task[None] | None = None
        self._file: IO[str] | None = None

    def start(self, entries: Iterable[Record]) -> None:
        """Begin afresh from `entries` (what loading found): a new snapshot, an empty
        journal. Also drops a torn last line, which later appends would run into."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        found = journals(self.state_dir)
        self.generation = max([g for g, _ in found] + [self.generation]) + 1
        self._open()
        write_snapshot(self.state_dir, self.generation, list(entries))

    def append(self, change: Record) -> None:
        """One line, written through to the OS. No fsync: a killed agent loses nothing
        (the page cache is the kernel's), and a lost machine loses its process jobs
        with the last lines; fsync per change is what made bursts slow."""
        if self._file is None:
            raise OSError(f"the ledger journal in {self.state_dir} is closed")
        self._file.write(json.dumps(change, separators=(",", ":")) + "\n")
        self._file.flush()
        self.appended += 1

    def compact(self, entries: list[Any], encode: Callable[[Any], Record]) -> None:
        """Start a new generation, then write `entries` (the ledger now) as its snapshot:
        in a thread when an event loop runs (the task is `compacting`), else at once.

        Changes appended meanwhile go to the new generation's journal, which the new
        snapshot names, so none is lost whenever the snapshot lands.
        """
        if self.compacting is not None or self._file is None:
            return  # one at a time, so snapshots land in generation order; none once closed
        self._open_next()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            write_snapshot(self.state_dir, self.generation, [encode(e) for e in entries])
            return
        task = loop.create_task(self._compact_off_loop(self.generation, entries, encode))
        self.compacting = task

    async def _compact_off_loop(
        self, generation: int, entries: list[Any], encode: Callable[[Any], Record]
    ) -> None:
        try:
            await asyncio.to_thread(
                lambda: write_snapshot(self.state_dir, generation, [encode(e) for e in entries])
            )
        except Exception as exc:  # the journals stay: a later compaction tries again
            log.warning("cannot compact the ledger in %s: %s", self.state_dir, exc)
        finally:
            self.compacting = None

    async def settle(self) -> None:
        """Let a compaction in flight land."""
        if self.compacting is not None:
            await asyncio.gather(self.compacting, return_exceptions=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open_next(self) -> None:
        self.generation += 1
        self._open()

    def _open(self) -> None:
        old, self._file = self._file, None
        if old is not None:
            try:
                old.close()
            except OSError as exc:  # a line it could not write (disk full): still unsaid
                log.warning("closing the ledger journal failed: %s", exc)
        path = self.state_dir / f"executions.{self.generation}.jsonl"
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (held until close)
        self.appended = 0


def write_snapshot(state_dir: Path, generation: int, entries: list[Record]) -> None:
    """Write the snapshot atomically, then delete the journals it makes redundant."""
    lines = ",\n".join(json.dumps(e, separators=(",", ":")) for e in entries)
    text = f'{{"journal": {generation}, "executions": [\n{lines}\n]}}\n'
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{SNAPSHOT}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state_dir / SNAPSHOT)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(state_dir)  # the rename is durable before the journals it replaces go
    for gen, journal in journals(state_dir):
        if gen < generation:
            journal.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
