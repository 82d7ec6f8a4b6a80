"""Self-fencing: a node cut off from the cluster stops its work before it is re-placed.

The requester writes a node's work off (LOST) and places it again once it has heard no
heartbeat for `lost_after` seconds (its `disconnected_after`, which it tells the node in
every register and info reply). A node that is cut off, or was frozen, keeps running
that work meanwhile, so without fencing two copies of a batch job run at once.

Contact is what the node can prove: a heartbeat that its NATS server acknowledged (the
flush after the publish returned), or an answered info update. When none has come for
`after` = lost_after minus a margin, every execution taken on before the silence began
is killed at once (no grace: its replacement may be starting), reported CANCELLED when
the node is back, and the reason logged. The same check runs when contact comes back,
so a node that was frozen (SIGSTOP, a VM paused) fences the moment it wakes, before its
first heartbeat can make it look healthy.

Timing assumptions: the node's and the requester's monotonic clocks run at the same
rate, and the requester's server relays a heartbeat within the margin. In a NATS cluster
"acknowledged by our server" does not prove the requester's server got it: a partition
between NATS servers is covered by the requester's side alone (LOST, cancel on return).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("hive.nodeagent")
MARGIN_CAP = 10.0  # seconds before the requester's threshold; a quarter of it when shorter
CHECK_CAP = 1.0  # the longest wait between two looks at the clock


class Fence:
    """When this node last had contact, and whether its work must stop."""

    def __init__(
        self, stop_work: Callable[[str, float], int], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stop_work = stop_work  # (reason, taken on before) -> executions stopped
        self._clock = clock
        self.last_contact = clock()
        self.lost_after = 0.0  # the requester's threshold; 0 until it says
        self.fenced = 0  # executions stopped by fencing, ever

    @property
    def after(self) -> float:
        """Seconds of silence after which work stops (infinite until the requester says)."""
        if self.lost_after <= 0:
            return float("inf")
        return self.lost_after - min(MARGIN_CAP, self.lost_after / 4)

    @property
    def check_every(self) -> float:
        return min(CHECK_CAP, max(0.05, self.after / 4))

    def check(self) -> None:
        """Called every `check_every`: stop the work if the silence has lasted too long."""
        self._fence_if_silent(self._clock())

    def contact(self, at: float | None = None) -> None:
        """Contact proved for time `at` (when the heartbeat went out; default now)."""
        at = self._clock() if at is None else at
        self._fence_if_silent(at)  # a gap seen only now (a frozen process waking)
        self.last_contact = max(self.last_contact, at)

    def _fence_if_silent(self, now: float) -> None:
        silence = now - self.last_contact
        if silence < self.after:
            return
        reason = (
            f"fenced: no contact with the cluster for {silence:.1f}s; the requester "
            f"places work elsewhere after {self.lost_after:g}s"
        )
        stopped = self._stop_work(reason, self.last_contact)
        if stopped:
            self.fenced += stopped
            log.warning("%s: stopped %d execution(s) at once", reason, stopped)
