"""Each owner's recent usage, for the fair queue, and what its executions hold now, for
quotas: kept up to date from the job store's executions, one O(1) step per change.

Usage is CPU-equivalent seconds (see `weight`) of the owner's executions while they
hold their resources (from the offer until they end), decayed exponentially with the
configured half-life: an hour-old second of one core counts half with `1h`. Per owner
only three numbers are kept (the usage at a moment, the weight running since, and that
moment), because with a constant running weight r the usage after dt is
U*exp(-k*dt) + r*(1 - exp(-k*dt))/k, with k = ln 2 / half-life; each execution that
starts or ends moves the moment on and changes r. When a requester takes the lead the
store rebuilds it from the execution records it keeps (created_at to ended_at of each),
so usage survives a restart or a failover as far as the records go back (the job
retention).

`Owners` is what the job store tells of each owner as records come and go: its jobs
that wait to start (for the queued-jobs quota, on every requester) and, through
FairShare, its executions that hold room (on the leader).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from hivectl.core.jobs import Execution, Job, JobState
from requester.jobs.executions import ACTIVE
from requester.jobs.ledger import NOTHING, Room

GIB = 2**30
# A CPU-equivalent: one core, 4 GiB of memory, or an eighth of a GPU, added up; an
# execution that asks for nothing still counts a tenth of one, so owners of such jobs
# are still told apart by how much they run.
MEMORY_PER_CPU = 4 * GIB
CPUS_PER_GPU = 8.0
MIN_WEIGHT = 0.1
DEFAULT_HALF_LIFE = 3600.0  # as [scheduler] fair_share_half_life's default


def weight(room: Room) -> float:
    return max(MIN_WEIGHT, room.cpu + room.memory / MEMORY_PER_CPU + room.gpu * CPUS_PER_GPU)


@dataclass(slots=True)
class Share:
    """One owner: usage as of `at`, the weight running since then, and the room held."""

    usage: float = 0.0
    rate: float = 0.0
    at: float = 0.0
    held: Room = NOTHING
    executions: int = 0


class FairShare:
    """Owners' decayed usage and held room. Times are wall-clock seconds (the records'
    timestamps are wall-clock too)."""

    def __init__(self, half_life: float, clock: Callable[[], float] = time.time) -> None:
        self.decay = math.log(2) / half_life
        self._clock = clock
        self._owners: dict[str, Share] = {}
        self._running: dict[str, tuple[str, Room]] = {}  # exec id -> (owner, room held)

    def reset(self) -> None:
        self._owners.clear()
        self._running.clear()

    # -- changes (the job store calls these) ----------------------------------------------
    def began(self, exec_id: str, owner: str, room: Room, since: float | None = None) -> None:
        """`exec_id` holds `room` for `owner` from `since` (default: now) on."""
        if exec_id in self._running:
            return
        now = self._clock()
        share = self._advanced(owner, now)
        w = weight(room)
        if since is not None and since < now:  # what it used before we knew of it
            share.usage += self._integral(w, now - since, 0.0)
        share.rate += w
        share.held = share.held.plus(room)
        share.executions += 1
        self._running[exec_id] = (owner, room)

    def ended(self, exec_id: str) -> None:
        held = self._running.pop(exec_id, None)
        if held is None:
            return
        owner, room = held
        share = self._advanced(owner, self._clock())
        share.rate = max(0.0, share.rate - weight(room))
        share.held = share.held.minus(room)
        share.executions -= 1
        if not share.executions:  # no float drift left behind
            share.rate, share.held = 0.0, NOTHING

    def used(self, owner: str, room: Room, began: float, ended: float) -> None:
        """A past execution (began, ended: wall-clock seconds) adds to `owner`'s usage."""
        now = self._clock()
        if ended <= began:
            return
        share = self._advanced(owner, now)
        share.usage += self._integral(weight(room), ended - began, max(0.0, now - ended))

    # -- reads ------------------------------------------------------------------------------
    def usage(self, owner: str) -> float:
        """The owner's decayed usage now, in CPU-equivalent seconds."""
        share = self._owners.get(owner)
        if share is None:
            return 0.0
        return self._at(share, self._clock())

    def rank(self, owner: str) -> tuple[float, float]:
        """The fair queue's key for an owner: least recent usage first, then least
        running now (two owners that have used nothing yet: the one running less)."""
        share = self._owners.get(owner)
        if share is None:
            return (0.0, 0.0)
        return (self._at(share, self._clock()), share.rate)

    def held(self, owner: str) -> Room:
        """What the owner's active executions hold now."""
        share = self._owners.get(owner)
        return NOTHING if share is None else share.held

    def running(self, exec_id: str) -> bool:
        return exec_id in self._running

    # -- arithmetic ---------------------------------------------------------------------
    def _at(self, share: Share, now: float) -> float:
        dt = max(0.0, now - share.at)
        kept = math.exp(-self.decay * dt)
        return share.usage * kept + share.rate * (1.0 - kept) / self.decay

    def _advanced(self, owner: str, now: float) -> Share:
        share = self._owners.get(owner)
        if share is None:
            share = self._owners[owner] = Share(at=now)
        elif now > share.at:
            share.usage, share.at = self._at(share, now), now
        return share

    def _integral(self, w: float, length: float, ago: float) -> float:
        """What `w` running for `length` seconds, ending `ago` seconds back, counts now."""
        d = self.decay
        return w * math.exp(-d * ago) * (1.0 - math.exp(-d * length)) / d


WAITING = frozenset({JobState.PENDING, JobState.QUEUED})  # what the queued-jobs quota counts


class Owners:
    def __init__(self) -> None:
        # Set by the requester; fed while its store decodes executions (as leader).
        self.share: FairShare | None = None
        self.rebuilding = False  # every record is being taken in again (a new leader)
        self._waiting_owner: dict[str, str] = {}  # job id -> owner, of waiting jobs
        self._waiting: Counter[str] = Counter()
        self._queued: set[str] = set()  # jobs that waited for room or quota (QUEUED)

    def waiting(self, owner: str) -> int:
        """The owner's jobs that wait to start (PENDING or QUEUED), as stored now."""
        return self._waiting[owner]

    def queued(self) -> int:
        """Jobs QUEUED (waiting for room or for their owner's quota), as stored now."""
        return len(self._queued)

    def reset_share(self) -> None:
        if self.share is not None:
            self.share.reset()

    def job(self, job_id: str, job: Job | None) -> None:
        """A job record taken in (None: gone)."""
        owner = self._waiting_owner.pop(job_id, None)
        if owner is not None:
            self._waiting[owner] -= 1
            if not self._waiting[owner]:
                del self._waiting[owner]
        if job is not None and job.state in WAITING:
            self._waiting_owner[job_id] = job.owner
            self._waiting[job.owner] += 1
        if job is not None and job.state is JobState.QUEUED:
            self._queued.add(job_id)
        else:
            self._queued.discard(job_id)

    def execution(
        self,
        job_id: str,
        exec_id: str,
        execution: Execution | None,
        record: Callable[[str], Job | None],
    ) -> None:
        """An execution record taken in (None: gone): its owner's usage follows it as
        it begins holding room or stops. `record(job_id)` is the job's own record."""
        share = self.share
        if share is None:
            return
        active = execution is not None and execution.state in ACTIVE
        if not active:
            share.ended(exec_id)
        if execution is None or (active and share.running(exec_id)):
            return
        if not active and not self.rebuilding:  # an ended one: counted while it ran
            return
        job = record(job_id)
        if job is None:
            return
        room = Room.of(job.spec.resources)
        began = execution.created_at.timestamp()
        if active:
            share.began(exec_id, job.owner, room, since=began)
        elif execution.ended_at is not None:
            share.used(job.owner, room, began, execution.ended_at.timestamp())
