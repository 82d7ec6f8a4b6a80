"""Quotas: how much each user may run at once, and how many jobs it may keep waiting.

A quota limits, per user, the CPU, memory and GPUs its executions hold at once (what
they requested, as placement counts it) and its jobs that wait to start (PENDING or
QUEUED). A limit left unset is no limit. The default quota applies to every user for
each limit the user's own quota leaves unset, so `--default --cpu 16` and
`alice --cpu 32` give alice 32 CPUs and everyone else 16.

Work over its owner's running quota is not refused: it waits QUEUED, its reason naming
the quota (`quota: alice uses 8 of 8 CPUs`), and runs when the owner's earlier work
ends. A submit over the queued-jobs quota is refused (error code `quota`).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field, Strict, StringConstraints

from hivectl.core.jobspec import Bytes, parse_cpu
from hivectl.core.models import ID_PATTERN, Message, Model, register_messages

# Users are named like nodes: the name is a KV key, and `_default` (the default quota's
# key) can never be one.
UserName = Annotated[str, StringConstraints(strict=True, pattern=ID_PATTERN)]
# A cluster's worth of cores, not a node's (a job's CPU request stops at 1024).
Cpu = Annotated[float, BeforeValidator(parse_cpu), Field(ge=0, le=1e7, allow_inf_nan=False)]
Gpus = Annotated[int, Strict(), Field(ge=0, le=1_000_000)]
QueuedJobs = Annotated[int, Strict(), Field(ge=0, le=10_000_000)]
Limit = Literal["cpu", "memory", "gpu", "queued"]
LIMITS: tuple[Limit, ...] = ("cpu", "memory", "gpu", "queued")


class Quota(Model):
    """Limits; None: no limit (of its own: for a user, the default's applies)."""

    cpu: Cpu | None = None
    memory: Bytes | None = None
    gpu: Gpus | None = None
    queued: QueuedJobs | None = None

    def over(self, default: Quota) -> Quota:
        """This quota's limits, and the default's where this one sets none."""
        return Quota(**{k: v if (v := getattr(self, k)) is not None else getattr(default, k)
                        for k in LIMITS})  # fmt: skip

    def is_empty(self) -> bool:
        return all(getattr(self, k) is None for k in LIMITS)


class QuotaSetRequest(Message):
    """Set (and clear) limits of one user's quota, or of the default quota.

    Limits given are set, limits named in `clear` removed, the others kept."""

    kind: ClassVar[str] = "quota_set"
    user: UserName | Literal[""] = ""
    default: Annotated[bool, Strict()] = False
    cpu: Cpu | None = None
    memory: Bytes | None = None
    gpu: Gpus | None = None
    queued: QueuedJobs | None = None
    clear: Annotated[list[Limit], Field(max_length=8)] = Field(default_factory=list)


class QuotaGetRequest(Message):
    kind: ClassVar[str] = "quota_get"
    user: UserName | Literal[""] = ""
    default: Annotated[bool, Strict()] = False


class QuotaReply(Message):
    """A user's own quota, the default, and what applies to the user (`effective`);
    for the default quota itself, `user` is empty and all three are the default."""

    kind: ClassVar[str] = "quota_reply"
    user: Annotated[str, StringConstraints(strict=True, max_length=64)] = ""
    own: Quota = Field(default_factory=Quota)
    default: Quota = Field(default_factory=Quota)
    effective: Quota = Field(default_factory=Quota)


register_messages(QuotaSetRequest, QuotaGetRequest, QuotaReply)
