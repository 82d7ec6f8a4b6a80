"""The owner's running quota, as the scheduler applies it to each placement.

What an owner holds is what FairShare counts of its active executions (kept by the
job store as their records come in) plus what placements in flight have planned but
not yet stored: a placement charges its executions here in the same step that plans
them, and takes the charge back once their records are stored (and so counted), so two
placements of one owner at once never both take the last of its quota.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from hivectl.core.jobs import Job
from hivectl.core.quotas import Quota
from requester.jobs.executions import QUOTA_REASON
from requester.jobs.fairshare import FairShare
from requester.jobs.ledger import NOTHING, Room
from requester.jobs.placement import amount

UNLIMITED = sys.maxsize
_RUNNING = (("cpu", "CPU"), ("memory", "memory"), ("gpu", "GPU"))


class QuotaGate:
    def __init__(self, quotas: Callable[[str], Quota], share: FairShare) -> None:
        self._quotas = quotas
        self._share = share
        self._planned: dict[str, Room] = {}  # owner -> room of placements in flight

    def held(self, owner: str) -> Room:
        """What the owner's executions hold, counting placements in flight."""
        held = self._share.held(owner)
        planned = self._planned.get(owner)
        return held if planned is None else held.plus(planned)

    def allows(self, job: Job, want: Room) -> tuple[int, str]:
        """How many executions of `want` the owner's running quota lets start now
        (UNLIMITED when no limit binds), and, when none, why not."""
        quota = self._quotas(job.owner)
        if quota.cpu is None and quota.memory is None and quota.gpu is None:
            return UNLIMITED, ""
        held = self.held(job.owner)
        allowed, why = UNLIMITED, ""
        for name, unit in _RUNNING:
            limit, asked = getattr(quota, name), getattr(want, name)
            if limit is None or asked <= 0:
                continue
            used = getattr(held, name)
            fits = max(0, int((limit - used + 1e-9) // asked))
            if fits < allowed:
                allowed = fits
                if not fits:
                    why = _why(job.owner, unit, used, limit, asked)
        return allowed, why

    def charge(self, owner: str, want: Room, count: int) -> None:
        if count:
            self._planned[owner] = self._planned.get(owner, NOTHING).plus(want, count)

    def discharge(self, owner: str, want: Room, count: int) -> None:
        planned = self._planned.get(owner)
        if planned is None or not count:
            return
        left = planned.minus(NOTHING.plus(want, count))
        if left.cpu <= 1e-9 and not (left.memory or left.disk or left.gpu):
            del self._planned[owner]
        else:
            self._planned[owner] = left


def _why(owner: str, unit: str, used: float, limit: float, asked: float) -> str:
    """`quota: alice uses 8 of 8 CPUs`, or, for an execution bigger than the whole
    quota, what it asks against what the quota allows."""
    if asked > limit + 1e-9:
        return (
            f"{QUOTA_REASON}one execution asks {amount(asked, unit)}, more than {owner}'s quota of "
            f"{amount(limit, unit)}"
        )
    return f"{QUOTA_REASON}{owner} uses {_number(used, unit)} of {amount(limit, unit)}"


def _number(value: float, unit: str) -> str:
    """The used amount without its unit (`8`, `30GiB`): the limit after it names it."""
    shown = amount(value, unit)
    return shown.split(" ", 1)[0]
