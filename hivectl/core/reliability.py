"""A node's reliability: its record of work that ended there, scored with a prior so a
new node is neither shut out nor trusted more than one with a record:

    score = (completed + 9) / (completed + node_failed + lost + 10)

a Beta(9, 1) prior: a new node scores 0.9; one lost execution out of one takes it to
9/11 (0.82); a hundred completed and none failed make 0.99. Work that failed on its
own (a non-zero exit, its timeout) or was stopped by someone does not count.

The record is derived by the requester from the usage records it writes itself
(requester/usage), never from anything a node says about its own score.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from hivectl.core.models import Model, NonNegInt

PRIOR_GOOD, PRIOR_BAD = 9, 1  # the Beta prior of every node's reliability
NEW_NODE_SCORE = PRIOR_GOOD / (PRIOR_GOOD + PRIOR_BAD)


def tier(score: float) -> int:
    """A score's ranking tier: tenths, rounded down. Placement compares tiers, not
    scores, so a small difference (0.98 against 0.99) does not pile work onto one node,
    while a node that lost or failed work (a new one scores 0.9, one that lost its only
    execution 0.82) ranks after those that did not."""
    return int(score * 10 + 1e-9)


RELIABLE_TIER = tier(NEW_NODE_SCORE)  # a new node's; no node ever ranks above it


def reliability_score(completed: int, node_failed: int, lost: int) -> float:
    """The score of a node with this record (see the module docstring)."""
    good = completed + PRIOR_GOOD
    return good / (good + node_failed + lost + PRIOR_BAD)


class Reliability(Model):
    """A node's record of work that ended there, and its score (see the module)."""

    score: Annotated[float, Field(ge=0.0, le=1.0)] = NEW_NODE_SCORE
    completed: NonNegInt = 0
    node_failed: NonNegInt = 0
    lost: NonNegInt = 0
