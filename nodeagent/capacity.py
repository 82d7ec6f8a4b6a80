"""The node's capacity ledger: what Hive may use here, and what running executions hold.

The node is the truth for its own capacity (the requester only estimates): an offer is
admitted when its resources fit in what is left, and they stay locked until the
execution ends (`lockCapability`). The ledger is persisted with the executions that hold
the locks (`executions.json`, written atomically), so a restarted agent knows what it
had running, re-attaches to its containers and reports the ones that ended meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hivectl.core.models import Resources, utcnow

log = logging.getLogger("hive.nodeagent")

LEDGER_FILE = "executions.json"
_GIB = 1024**3


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
        data = asdict(self)
        data["resources"] = self.resources.model_dump(mode="json")
        return data

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


class Ledger:
    """Allocatable resources minus the locks of the executions running here."""

    def __init__(self, path: Path, allocatable: Resources) -> None:
        self.path = path
        self.allocatable = allocatable
        self.held: dict[str, Held] = {}

    @classmethod
    def load(cls, state_dir: Path, allocatable: Resources) -> Ledger:
        """The ledger stored in `state_dir` (empty when there is none or it is unreadable)."""
        ledger = cls(state_dir / LEDGER_FILE, allocatable)
        try:
            records = json.loads(ledger.path.read_text())["executions"]
            ledger.held = {r["exec_id"]: Held.from_json(r) for r in records}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", ledger.path, exc)
        return ledger

    @property
    def locked(self) -> Resources:
        total = Resources()
        for held in self.held.values():
            if held.final is not None:  # ended: only its report is pending
                continue
            r = held.resources
            total = Resources(
                cpu=round(total.cpu + r.cpu, 6),
                memory=total.memory + r.memory,
                disk=total.disk + r.disk,
                gpu=total.gpu + r.gpu,
            )
        return total

    @property
    def available(self) -> Resources:
        return self.allocatable.minus(self.locked)

    def __contains__(self, exec_id: object) -> bool:
        return exec_id in self.held

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
        reason = shortfall(resources, self.available)
        if reason is not None:
            return reason
        self.held[exec_id] = Held(exec_id, job_id, engine, resources, spec=spec or {})
        self.save()
        return None

    def set_handle(self, exec_id: str, handle: str) -> None:
        held = self.held.get(exec_id)
        if held is not None and held.handle != handle:
            held.handle = handle
            self.save()

    def finish(self, exec_id: str, state: str, exit_code: int | None, error: str) -> None:
        """The execution ended: its lock is free; its outcome stays until `release`,
        once reported, so an agent that dies before reporting it reports it on restart."""
        held = self.held.get(exec_id)
        if held is not None:
            held.final = {"state": state, "exit_code": exit_code, "error": error}
            self.save()

    def release(self, exec_id: str) -> None:
        if self.held.pop(exec_id, None) is not None:
            self.save()

    def save(self) -> None:
        """Write the ledger atomically: a crash leaves the old file or the new one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"executions": [h.to_json() for h in self.held.values()]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{LEDGER_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
