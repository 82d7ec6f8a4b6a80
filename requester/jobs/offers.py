"""Offers to compute nodes, and what their answers do to a job record.

An offer is stored OFFERED before it is sent, so the record always knows of work a node
may have taken. Its answer then moves it: ACCEPTED, or REJECTED when the node declined.
No answer settles nothing: the node may have taken it, and writing it off would run it
twice. Such an offer is withdrawn instead: the node answers whether it took it (then it
is ACCEPTED, and its updates follow through HIVE_EXEC) or promises never to (REJECTED,
and the work may go elsewhere). Until a node answers either, the offer stays OFFERED;
its node going away makes it LOST like any other work there.

Answers the store could not take (a stream electing a leader) are kept and written at
the next tick, and offers nobody is waiting on any more (a leader that died mid-offer,
an answer lost with its requester) are withdrawn at the tick as well.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import timedelta

from hivectl.core.jobs import JOB_TERMINAL, ExecState, Execution, Job, JobState
from hivectl.core.models import utcnow
from requester.jobs.executions import advance, finish, missing, settle
from requester.jobs.fenced import Deposed, FencedJobs
from requester.nodes.link import Answer, NodeLink

log = logging.getLogger("hive.requester.offers")
KEEP_REJECTED = 32  # declined offers kept in a job's history; older ones are dropped


class Offers:
    def __init__(self, store: FencedJobs, link: NodeLink, offer_timeout: float) -> None:
        self._store = store
        self._link = link
        self._offer_timeout = offer_timeout
        self._inflight: set[str] = set()  # executions whose offers await an answer
        self._unstored: dict[str, list[Answer]] = {}  # job id -> answers not written yet
        self.withdrawn = 0  # offers taken back after their answer was lost

    async def send(self, job: Job, new: list[Execution]) -> list[Answer]:
        """Offer `new` (stored OFFERED already); the answers, those it learned written.

        An answer with `unanswered` set is still unknown after a withdrawal: the
        execution stays OFFERED (and holds its room) until the node says.
        """
        ids = {e.exec_id for e in new}
        self._inflight |= ids
        try:
            epoch = self._store.epoch  # the deciding leader's, whoever sends the offers
            answers = await asyncio.gather(*(self._link.offer(e, job.spec, epoch) for e in new))
            lost = [e for e, a in zip(new, answers, strict=True) if a.unanswered]
            if lost:
                settled = {a.exec_id: a for a in await self._withdraw(lost)}
                answers = [settled.get(a.exec_id, a) for a in answers]
            await self._write(job.job_id, answers)
        finally:
            self._inflight -= ids
        return answers

    async def _withdraw(self, executions: list[Execution]) -> list[Answer]:
        epoch = self._store.epoch
        answers = await asyncio.gather(*(self._link.withdraw(e, epoch) for e in executions))
        self.withdrawn += sum(1 for a in answers if not a.unanswered)
        return answers

    async def _write(self, job_id: str, answers: list[Answer]) -> None:
        known = [a for a in answers if not a.unanswered]
        if not known:
            return
        try:
            await self._store.change(job_id, functools.partial(answered, answers=known))
        except Deposed:
            raise
        except Exception as exc:  # the store is electing a leader, say: keep them
            log.warning("answers for job %s kept for the next tick: %s", job_id, exc)
            self._unstored.setdefault(job_id, []).extend(known)

    async def tick(self) -> None:
        """Write the answers kept back; withdraw the offers nobody waits on."""
        kept, self._unstored = self._unstored, {}
        for job_id, answers in kept.items():
            await self._write(job_id, answers)
        await self._withdraw_stale()

    async def _withdraw_stale(self) -> None:
        cutoff = utcnow() - timedelta(seconds=2 * self._offer_timeout)
        for job in self._store.unfinished():
            pending = {a.exec_id for a in self._unstored.get(job.job_id, [])}
            stale = [
                e
                for e in job.executions
                if e.state is ExecState.OFFERED
                and e.exec_id not in self._inflight
                and e.exec_id not in pending
                and e.created_at < cutoff
            ]
            if stale:
                await self._write(job.job_id, await self._withdraw(stale))


async def store_offers(store: FencedJobs, job: Job, new: list[Execution]) -> bool:
    """The new executions stored OFFERED; False when the job changed under us (what is
    missing is no longer what the offers were planned for: decide again)."""
    before = missing(job)

    def add_offers(current: Job) -> Job | None:
        if missing(current) != before:
            return None
        return current.model_copy(update={"executions": [*current.executions, *new]})

    stored = await store.change(job.job_id, add_offers)
    ids = {e.exec_id for e in new}
    return stored is not None and ids <= {e.exec_id for e in stored.executions}


def answered(job: Job, answers: list[Answer]) -> Job | None:
    """The job with the nodes' answers to its offers applied; None when nothing moves.

    A refusal for good (the spec breaks a rule every node applies) fails the job with
    the node's reason: offering it elsewhere, or again each tick, cannot help.
    """
    now, changed, for_good = utcnow(), False, ""
    by_id = {a.exec_id: a for a in answers}
    executions: list[Execution] = []
    for execution in job.executions:  # one pass: a job may hold many executions
        answer = by_id.get(execution.exec_id)
        moved = None
        if answer is not None:
            state = ExecState.ACCEPTED if answer.accepted else ExecState.REJECTED
            moved = advance(execution, state, now, error="" if answer.accepted else answer.reason)
            if moved is not None and answer.permanent and not for_good:
                for_good = f"{execution.node_id} refused it for good: {answer.reason}"
        changed = changed or moved is not None
        executions.append(moved or execution)
    if not changed:
        return None
    after = settle(_trim_rejected(job.model_copy(update={"executions": executions})))
    if for_good and after.state not in JOB_TERMINAL:
        return finish(after, JobState.FAILED, for_good)
    return after


def _trim_rejected(job: Job) -> Job:
    rejected = [e.exec_id for e in job.executions if e.state is ExecState.REJECTED]
    drop = set(rejected[:-KEEP_REJECTED])
    if not drop:
        return job
    return job.model_copy(
        update={"executions": [e for e in job.executions if e.exec_id not in drop]}
    )
