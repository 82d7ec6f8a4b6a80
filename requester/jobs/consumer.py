"""The HIVE_EXEC consumer: execution updates from nodes, applied in stream order by the
leading requester, each acked once it is stored (executions.py has the rules)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hivectl.core import auth, codec
from hivectl.core.jobs import JOB_TERMINAL, ExecUpdate, Execution, Job
from hivectl.core.subjects import Subjects
from requester.drops import Dropped, Drops
from requester.jobs.executions import ACTIVE, ES, FROM_NODE, apply_updates, missing
from requester.jobs.streams import EXEC_CONSUMER
from requester.nodes.registry import Registry

if TYPE_CHECKING:
    from requester.jobs.fenced import FencedJobs

log = logging.getLogger("hive.requester.executions")

BATCH = 256  # updates applied together at most (each job's in one write)
CHECK_EVERY = 0.5  # seconds between looks at the consumer's unacked updates


async def _next_batch(sub: JetStreamContext.PullSubscription) -> list[Msg]:
    """The next update as soon as it is stored, with those already waiting behind it.

    Not one `fetch(BATCH)`: when nothing waits, nats-py's fetch of a batch lingers until
    the batch is full or its timeout passes, so an update coming to an idle consumer
    waited up to the whole timeout (a second) and a batch job's executions trickled
    through at that pace. A fetch of one returns with the first; what its metadata says
    waits behind it is there to take at once.
    """
    first = await sub.fetch(batch=1, timeout=1.0)
    waiting = first[-1].metadata.num_pending if first else 0
    if not waiting:
        return first
    try:
        return first + await sub.fetch(batch=min(waiting, BATCH - 1), timeout=1.0)
    except (NatsTimeoutError, TimeoutError):  # taken meanwhile (redelivery): next round
        return first


CancelSink = Callable[[list[Execution], str], None]


class Taken(NamedTuple):
    """An update to apply: its message (to ack), and the execution as it was."""

    msg: Msg
    update: ExecUpdate
    before: Execution


class ExecConsumer:
    """Applies HIVE_EXEC updates in stream order, acking each once it is stored."""

    def __init__(
        self,
        subjects: Subjects,
        registry: Registry,
        store: FencedJobs,
        *,
        kick: Callable[[str], None],
        ended: Callable[[list[str]], None],
        cancel: CancelSink,
        limits: codec.Limits,
    ) -> None:
        self._subjects = subjects
        self._registry = registry
        self._store = store
        self._kick = kick
        self._ended = ended
        self._cancel = cancel
        self._limits = limits
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._sub: JetStreamContext.PullSubscription | None = None
        self._drops = Drops(subjects, log, "exec update")
        self.received = 0
        self.rejected = self._drops.counts
        # Monotonic time as of which every update stored was applied: a fetch asked then
        # came back empty, or with the last pending update, all applied; and none is out
        # (see _caught_up).
        self.caught_up_at = 0.0
        self._owed: set[int] = set()  # stream sequences of updates nak'd to come again
        self._checked_at = -CHECK_EVERY

    async def start(self, js: JetStreamContext) -> None:
        config = ConsumerConfig(
            durable_name=EXEC_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30.0,
            max_deliver=-1,
        )
        sub = await js.pull_subscribe(
            self._subjects.node_wildcard("exec"),
            durable=EXEC_CONSUMER,
            stream=self._subjects.exec_stream,
            config=config,
        )
        self._sub = sub
        self._task = asyncio.create_task(self._run(sub), name="exec-consumer")

    async def close(self) -> None:
        """Stop fetching; the durable consumer (server side) keeps our place for next time."""
        # The flag as well as the cancel: Python 3.11's wait_for (inside nats-py's fetch)
        # can turn a cancel that meets its timeout into TimeoutError, which the loop
        # takes for "nothing waiting" and goes on (a requester's close hung on it).
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may already be gone
                await self._sub.unsubscribe()

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._closing:
            asked = time.monotonic()
            try:
                batch = await _next_batch(sub)
            except (NatsTimeoutError, TimeoutError):
                await self._caught_up(sub, asked)  # nothing was waiting
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: the durable consumer keeps our place
                log.warning("exec updates: fetch failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if batch and await self.handle(batch) and batch[-1].metadata.num_pending == 0:
                await self._caught_up(sub, asked)

    async def _caught_up(self, sub: JetStreamContext.PullSubscription, asked: float) -> None:
        """Say every update stored as of `asked` is applied, unless one is still out: one
        of ours nak'd after a failed write (it comes back after a delay, and a fetch
        meanwhile finds nothing), or one delivered and not acked, say to a leader that
        died with it (it comes back only after ack_wait). Reconciliation writes work off
        on the strength of this, so a wrong "caught up" would run it twice."""
        if self._owed or asked - self._checked_at < CHECK_EVERY:
            return
        self._checked_at = asked
        try:
            info = await sub.consumer_info()
        except Exception as exc:  # NATS away: not known to be caught up
            log.debug("exec consumer info: %s", exc)
            return
        if not info.num_ack_pending and not info.num_pending:
            self.caught_up_at = asked

    async def handle(self, batch: list[Msg]) -> bool:
        """Apply a fetched batch (dropping what is not to be applied), each job's updates
        in one change; False when some must come again (store trouble)."""
        by_job: dict[str, list[Taken]] = {}
        for msg in batch:
            try:
                update = self._open(msg)
                before = await self._owned(update)
            except Dropped as drop:
                self._drop(msg.subject, drop)
                await msg.ack()
                self._owed.discard(msg.metadata.sequence.stream)
                continue
            by_job.setdefault(update.job_id, []).append(Taken(msg, update, before))
        applied = await asyncio.gather(*(self._apply(job_id, t) for job_id, t in by_job.items()))
        return all(applied)

    async def _apply(self, job_id: str, taken: list[Taken]) -> bool:
        updates = [(t.update, t.msg.metadata.timestamp) for t in taken]
        try:
            after = await self._store.change(job_id, lambda job: apply_updates(job, updates))
        except Exception:  # KV unavailable: leave them unacked, they come back
            log.exception("%d exec update(s) of %s not applied; will retry", len(taken), job_id)
            for t in taken:
                self._owed.add(t.msg.metadata.sequence.stream)
                await t.msg.nak(delay=1.0)
            return False
        for t in taken:
            await t.msg.ack()
            self._owed.discard(t.msg.metadata.sequence.stream)
        self.received += len(taken)
        self._follow_up(taken, after)
        return True

    def _follow_up(self, taken: list[Taken], after: Job | None) -> None:
        ended = [t.update.exec_id for t in taken if t.update.state not in ACTIVE]
        if ended:
            self._ended(ended)
        for t in taken:
            if t.before.state not in ACTIVE and t.update.state in (ES.STARTING, ES.RUNNING):
                # The node runs work this requester wrote off (lost, cancelled): stop it.
                reason = f"execution is {t.before.state.lower()} at the requester"
                self._cancel([t.before], reason)
        if after is not None and after.state not in JOB_TERMINAL and missing(after)[0]:
            self._kick(after.job_id)

    def _open(self, msg: Msg) -> ExecUpdate:
        node_id = self._subjects.node_id_from(msg.subject)
        key = self._registry.message_key(node_id)
        if key is None:
            raise Dropped("unknown_node", f"no record for node {node_id!r}")
        try:
            payload = auth.open_sealed(msg.data, key)
            update = codec.decode(payload, ExecUpdate, self._limits)
        except auth.AuthError as exc:
            raise Dropped("unauthenticated", str(exc)) from None
        except codec.CodecError as exc:
            raise Dropped(exc.code, exc.reason) from None
        if update.node_id != node_id:
            raise Dropped("id_mismatch", f"body speaks for another node than subject {node_id!r}")
        if update.state not in FROM_NODE:
            raise Dropped("bad_state", f"a node cannot report {update.state}")
        return update

    async def _owned(self, update: ExecUpdate) -> Execution:
        """The execution the update is about, when it was placed on the sending node.

        Memory may lag the bucket (a watch that stalled while a stream elected a
        leader, a leader just taken over): what it does not know is read afresh before
        an update is dropped for good."""
        found = self._store.execution(update.job_id, update.exec_id)
        if found is None or found.node_id != update.node_id:
            found = await self._store.fresh_exec(update.job_id, update.exec_id)
        if found is None and await self._store.fresh(update.job_id) is None:
            raise Dropped("unknown_job", f"no job {update.job_id}")
        if found is None or found.node_id != update.node_id:
            raise Dropped("not_your_exec", f"{update.exec_id} is not {update.node_id}'s execution")
        return found

    def _drop(self, subject: str, drop: Dropped) -> None:
        self._drops.record(subject, drop)
