"""Usage accounting and node reliability: what one execution used, and the reports.

A node measures what it can of each execution (`Measured`, in its final ExecUpdate).
The requester that writes an execution's end turns it into one `UsageRecord` in the
HIVE_USAGE stream (its message id is the exec id: a repeat is stored once), and every
requester keeps aggregates of that stream for `hivectl usage` and for placement.

Reliability (reliability.py) is derived from the same records.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, Strict

from hivectl.core.jobs import ExecState, Measured
from hivectl.core.models import (
    ExecId,
    Message,
    Model,
    NodeId,
    NonNegFloat,
    NonNegInt,
    ShortText,
    register_messages,
)
from hivectl.core.reliability import PRIOR_BAD, PRIOR_GOOD, Reliability, reliability_score

__all__ = ["PRIOR_BAD", "PRIOR_GOOD", "Reliability", "reliability_score"]

GIB = float(2**30)


class Fault(StrEnum):
    """Whose doing an execution's end was, as reliability counts it."""

    NONE = "none"  # it completed, failed on its own, or someone stopped it
    NODE = "node"  # the node failed it: could not start it, stopped it unasked
    LOST = "lost"  # the node went away with it


class UsageRecord(Message):
    """One ended execution: who ran what where, for how long, with what resources."""

    kind: ClassVar[str] = "usage_record"
    exec_id: ExecId
    job_id: ShortText
    node_id: NodeId
    user: ShortText
    state: ExecState
    fault: Fault = Fault.NONE
    started_at: datetime | None = None  # None: it never ran
    ended_at: datetime
    wall_seconds: NonNegFloat = 0.0
    cpu: NonNegFloat = 0.0  # cores requested
    memory: NonNegInt = 0  # bytes requested
    gpu: NonNegInt = 0  # devices requested
    measured: Measured | None = None


class UsageBy(StrEnum):
    USER = "user"
    NODE = "node"
    USER_NODE = "user,node"


class UsageRow(Model):
    """Totals of the executions that ended in the report's window, for one group."""

    user: ShortText = ""  # empty when not grouped by user
    node: ShortText = ""  # empty when not grouped by node
    executions: NonNegInt = 0
    completed: NonNegInt = 0
    failed: NonNegInt = 0  # failed on their own (exit code, timeout)
    node_failed: NonNegInt = 0
    lost: NonNegInt = 0
    cancelled: NonNegInt = 0
    wall_seconds: NonNegFloat = 0.0
    cpu_seconds: NonNegFloat = 0.0  # requested cores x wall time
    memory_gib_seconds: NonNegFloat = 0.0  # requested GiB x wall time
    gpu_seconds: NonNegFloat = 0.0  # requested GPUs x wall time
    measured_cpu_seconds: NonNegFloat = 0.0  # as the nodes measured it
    measured_executions: NonNegInt = 0  # how many of them a node measured


class UsageReportRequest(Message):
    kind: ClassVar[str] = "usage_report"
    user: ShortText = ""  # only this user's executions
    node: ShortText = ""  # only this node's (an id, or a unique prefix of one)
    since: datetime | None = None  # ended at or after (to the hour); None: all kept
    by: UsageBy = UsageBy.USER


class UsageReportReply(Message):
    kind: ClassVar[str] = "usage_report_reply"
    rows: Annotated[list[UsageRow], Field(max_length=10_000)]
    since: datetime | None = None  # the window's start as applied (an hour's start)
    until: datetime  # the requester's clock when it answered
    truncated: Annotated[bool, Strict()] = False  # more groups than one reply carries


register_messages(UsageRecord, UsageReportRequest, UsageReportReply)
