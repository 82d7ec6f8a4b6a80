"""The node's capacity ledger: what Hive may use here, and what running executions hold.

The node is the truth for its own capacity (the requester only estimates): an offer is
admitted when its resources fit in what is left and the node runs fewer executions than
its `max_executions`, and they stay locked until the execution ends (`lockCapability`).
The ledger is persisted with the executions that hold the locks (`nodeagent.journal`: a
snapshot and an append-only journal, one line per change), so a restarted agent knows
what it had running, re-attaches to its containers and reports the ones that ended
meanwhile. Every change costs O(1), whatever the ledger holds: offers come in bursts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hivectl.core.models import Resources, utcnow
from nodeagent import journal
from nodeagent.journal import Journal, Record

log = logging.getLogger("hive.nodeagent")

LEDGER_FILE = journal.SNAPSHOT
# The journal is compacted once it has more changes than this, and more than
# COMPACT_FACTOR times the live entries: each compaction's O(n) then follows O(n)
# appends, and a handful of executions does not rewrite the snapshot every few changes.
COMPACT_AFTER = 1000
COMPACT_FACTOR = 4
_GIB = 1024**3
_MICRO = 1_000_000  # CPU is summed in micro-cores: integers add up exactly


@dataclass
class Held:
    """One execution holding a lock: enough to find it again after a restart."""

    exec_id: str
    job_id: str
    engine: str
    resources: Resources
    handle: str = ""  # the container id or the process id, once there is one
    started: str = field(default_factory=lambda: utcnow().isoformat(timespec="seconds"))
    spec: dict[str, Any] = field(default_factory=dict)  # the job spec, to finish it after a restart
    # How it ended (state, exit_code, error), written before the final update is
    # published: its lock is free, and a restarted agent publishes what is still here.
    final: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        # By hand, not `asdict`: that deep-copies the spec and the pydantic model, the
        # larger part of an admit's cost, for a dict that is serialised at once.
        return {
            "exec_id": self.exec_id,
            "job_id": self.job_id,
            "engine": self.engine,
            "resources": self.resources.model_dump(mode="json"),
            "handle": self.handle,
            "started": self.started,
            "spec": self.spec,
            "final": self.final,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Held:
        return cls(
            exec_id=str(data["exec_id"]),
            job_id=str(data["job_id"]),
            engine=str(data["engine"]),
            resources=Resources.model_validate(data["resources"]),
            handle=str(data.get("handle", "")),
            started=str(data.get("started", "")),
            spec=dict(data.get("spec") or {}),
            final=dict(data["final"]) if data.get("final") else None,
        )


class _Totals(NamedTuple):
    """What the running executions lock, kept as they come and go (CPU in micro-cores)."""

    cpu: int = 0
    memory: int = 0
    disk: int = 0
    gpu: int = 0

    def plus(self, r: Resources, sign: int = 1) -> _Totals:
        return _Totals(
            self.cpu + sign * round(r.cpu * _MICRO),
            self.memory + sign * r.memory,
            self.disk + sign * r.disk,
            self.gpu + sign * r.gpu,
        )


class Ledger:
    """Allocatable resources minus the locks of the executions running here.

    `held` is read by others, never changed: every change goes through the methods
    below, which write it to the journal and keep `running` and `locked` current.
    """

    def __init__(self, state_dir: Path, allocatable: Resources, max_executions: int = 0) -> None:
        self.journal = Journal(state_dir)
        self.allocatable = allocatable
        self.max_executions = max_executions  # 0: only resources limit admission
        self.held: dict[str, Held] = {}
        self.running = 0  # held and not ended: what max_executions counts
        # One tuple, replaced whole: the metrics thread reads a consistent one.
        self._locked = _Totals()
        self._behind = False  # a change failed to reach the journal

    @classmethod
    def load(cls, state_dir: Path, allocatable: Resources, max_executions: int = 0) -> Ledger:
        """The ledger stored in `state_dir` (empty when there is none or it is unreadable),
        written back as a fresh snapshot with an empty journal."""
        ledger = cls(state_dir, allocatable, max_executions)
        try:
            entries, changes = journal.read(state_dir)
        except journal.Unreadable as exc:
            log.warning("ignoring %s; starting with an empty ledger", exc)
            entries, changes = [], []
        for entry in entries:
            ledger._apply({"op": "admit", "entry": entry})
        for change in changes:
            ledger._apply(change)
        ledger.journal.start(h.to_json() for h in ledger.held.values())
        return ledger

    async def close(self) -> None:
        """Let a compaction in flight land; close the journal."""
        await self.journal.settle()
        self.journal.close()

    @property
    def locked(self) -> Resources:
        t = self._locked
        return Resources(cpu=t.cpu / _MICRO, memory=t.memory, disk=t.disk, gpu=t.gpu)

    @property
    def available(self) -> Resources:
        return self.allocatable.minus(self.locked)

    def __contains__(self, exec_id: object) -> bool:
        return exec_id in self.held

    def full(self) -> str | None:
        """Why this node takes no more executions now, or None."""
        limit = self.max_executions
        if limit and self.running >= limit:
            return f"node full: {self.running} of {limit} executions running (max_executions)"
        return None

    def admit(
        self,
        exec_id: str,
        resources: Resources,
        *,
        job_id: str = "",
        engine: str = "",
        spec: dict[str, Any] | None = None,
    ) -> str | None:
        """Lock `resources` for `exec_id`: None when admitted, else why not.

        An exec id that already holds a lock is admitted again without a second lock.
        """
        if exec_id in self.held:
            return None
        reason = self.full() or shortfall(resources, self.available)
        if reason is not None:
            return reason
        held = Held(exec_id, job_id, engine, resources, spec=spec or {})
        try:  # written first: an execution the disk does not know must not run
            self.journal.append({"op": "admit", "entry": held.to_json()})
        except OSError as exc:
            log.warning("cannot write the ledger journal: %s", exc)
            return f"cannot record the execution in the node's state dir: {exc}"
        self._put(held)
        self._maybe_compact()
        return None

    def set_handle(self, exec_id: str, handle: str) -> None:
        held = self.held.get(exec_id)
        if held is not None and held.handle != handle:
            held.handle = handle
            self._write({"op": "handle", "exec_id": exec_id, "handle": handle})

    def finish(self, exec_id: str, state: str, exit_code: int | None, error: str) -> None:
        """The execution ended: its lock is free; its outcome stays until `release`,
        once reported, so an agent that dies before reporting it reports it on restart."""
        final = {"state": state, "exit_code": exit_code, "error": error}
        if exec_id in self.held:
            self._final(exec_id, final)
            self._write({"op": "finish", "exec_id": exec_id, "final": final})

    def release(self, exec_id: str) -> None:
        if exec_id in self.held:
            self._drop(exec_id)
            self._write({"op": "release", "exec_id": exec_id})

    # -- in memory ---------------------------------------------------------------------
    def _put(self, held: Held) -> None:
        self._drop(held.exec_id)
        self.held[held.exec_id] = held
        if held.final is None:
            self.running += 1
            self._locked = self._locked.plus(held.resources)

    def _drop(self, exec_id: str) -> None:
        held = self.held.pop(exec_id, None)
        if held is not None and held.final is None:
            self.running -= 1
            self._locked = self._locked.plus(held.resources, -1)

    def _final(self, exec_id: str, final: dict[str, Any]) -> None:
        held = self.held[exec_id]
        if held.final is None:
            self.running -= 1
            self._locked = self._locked.plus(held.resources, -1)
        held.final = final

    def _apply(self, change: Record) -> None:
        """One change read back from disk; a malformed one is skipped with a warning."""
        try:
            op = change["op"]
            if op == "admit":
                self._put(Held.from_json(change["entry"]))
                return
            exec_id = str(change["exec_id"])
            if exec_id not in self.held:
                return  # released in an earlier change, or lost with its snapshot
            if op == "handle":
                self.held[exec_id].handle = str(change["handle"])
            elif op == "finish":
                self._final(exec_id, dict(change["final"]))
            elif op == "release":
                self._drop(exec_id)
            else:
                raise ValueError(f"unknown op {op!r}")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ledger journal: skipping a malformed change (%s)", exc)

    # -- on disk -----------------------------------------------------------------------
    def _write(self, change: Record) -> None:
        """Journal a change already made in memory. A failure is logged, and the next
        compaction, which writes the whole ledger, is due at once."""
        try:
            self.journal.append(change)
        except OSError as exc:
            log.warning("cannot write the ledger journal: %s", exc)
            self._behind = True
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        appended = self.journal.appended
        if self._behind or appended > max(COMPACT_AFTER, COMPACT_FACTOR * len(self.held)):
            self._behind = False
            try:
                self.journal.compact(list(self.held.values()), Held.to_json)
            except OSError as exc:
                log.warning("cannot compact the ledger: %s", exc)
                self._behind = True


def shortfall(wanted: Resources, free: Resources) -> str | None:
    """Why `wanted` does not fit in `free` (the first resource short), or None."""
    if wanted.cpu > free.cpu + 1e-9:
        return f"needs {wanted.cpu:g} CPU, {free.cpu:g} free"
    if wanted.memory > free.memory:
        return f"needs {_size(wanted.memory)} memory, {_size(free.memory)} free"
    if wanted.disk > free.disk:
        return f"needs {_size(wanted.disk)} disk, {_size(free.disk)} free"
    if wanted.gpu > free.gpu:
        return f"needs {wanted.gpu} GPU, {free.gpu} free"
    return None


def _size(n: int) -> str:
    for unit, scale in (("GiB", _GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n}B"
