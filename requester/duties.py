"""What only the leading requester does; started when it is elected, stopped when not.

Placing jobs (the scheduler, which also writes off unanswered offers; a follower places
the jobs submitted to it while none waits, see jobs/assist.py), applying the
nodes' execution updates (the HIVE_EXEC durable consumer), writing off the work of
nodes that went away or lost it (node events, reconciliation), carrying out node
drains (the Drainer), and deleting finished jobs past their retention. Each is a
decision that must be made once in a cluster; the other requesters serve the API,
register nodes and keep their health warm for the moment they lead. Every job write
goes through FencedJobs with the leader's epoch.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from hivectl.core import codec
from hivectl.core.config import RequesterConfig
from hivectl.core.jobs import JOB_ID_PATTERN, Job, JobState
from hivectl.core.models import Health, NodeEvent
from hivectl.core.quotas import Quota
from hivectl.core.subjects import Subjects
from requester.jobs import placement
from requester.jobs.assist import Claims
from requester.jobs.consumer import ExecConsumer
from requester.jobs.fenced import FencedJobs
from requester.jobs.reconcile import Reconciler
from requester.jobs.records import JobStore
from requester.jobs.scheduler import NO_QUOTA, Scheduler, placement_histogram
from requester.nodes.drain import Drainer
from requester.nodes.link import NodeLink
from requester.nodes.liveness import Liveness
from requester.nodes.prune import Pruner
from requester.nodes.registry import Registry
from requester.store import Store
from requester.usage.service import Usage

log = logging.getLogger("hive.requester")
EXPIRE_EVERY = 60.0  # seconds between looks for finished jobs past their retention
JOB_ID = re.compile(JOB_ID_PATTERN)


class LeaderDuties:
    def __init__(
        self,
        config: RequesterConfig,
        nc: Client,
        subjects: Subjects,
        registry: Registry,
        liveness: Liveness,
        jobs: JobStore,
        link: NodeLink,
        *,
        started_at: float,
    ) -> None:
        self.config = config
        self.nc = nc  # for the nudges other requesters send (job_created)
        self.subjects = subjects
        self.registry = registry
        self.liveness = liveness
        self.jobs = jobs
        self.link = link
        self.started_at = started_at
        self.scheduler: Scheduler | None = None
        self.exec_consumer: ExecConsumer | None = None
        self.reconciler: Reconciler | None = None
        self.drainer: Drainer | None = None
        self._created: Subscription | None = None
        self._silent_check: float | None = None
        self._next_expiry = 0.0
        self.placement_seconds = placement_histogram()  # across every term as leader
        self.pruner: Pruner | None = None  # deletes long-UNKNOWN nodes (node_prune_after)
        self.usage: Usage | None = None  # the usage book (reliability) and its publisher
        self.quotas: Callable[[str], Quota] = lambda owner: NO_QUOTA  # the requester's book
        # Jobs a follower took to place itself (assist.py): left to it for a while.
        self.claims = Claims(config.name, 2 * config.offer_timeout)

    @property
    def active(self) -> bool:
        return self.scheduler is not None

    async def start(self, js: Store, epoch: int, valid: Callable[[], bool]) -> None:
        cfg = self.config
        subject = self.subjects.job_created
        self._created = await self.nc.subscribe(subject, cb=self._on_created)
        self.jobs.lead()
        fenced = FencedJobs(self.jobs, epoch, valid)
        self.link.epoch = epoch
        self.scheduler = scheduler = Scheduler(
            fenced,
            self.registry,
            self.liveness,
            self.link,
            interval=cfg.scheduler_interval,
            offer_timeout=cfg.offer_timeout,
            scores=self.usage.book.scores if self.usage else placement.NO_SCORES,
            tiers=self.usage.book.tiers if self.usage else placement.NO_TIERS,
            share=self.jobs.owners.share,
            quotas=self.quotas,
            reserve_after=cfg.scheduler.backfill_reserve_after,
            claims=self.claims,
        )
        scheduler.placement_seconds = self.placement_seconds
        self.exec_consumer = ExecConsumer(
            self.subjects,
            self.registry,
            fenced,
            kick=scheduler.kick,
            ended=scheduler.ended,
            cancel=self.link.cancel,
            limits=codec.Limits(max_bytes=cfg.max_payload),
        )
        consumer = self.exec_consumer
        self.reconciler = Reconciler(
            self.jobs, scheduler.executions_gone, lambda: consumer.caught_up_at
        )
        self.drainer = Drainer(self.registry, fenced, kick=scheduler.kick, valid=valid)
        scheduler.start()
        stream = self.subjects.exec_stream
        await js.retried(stream, lambda: consumer.start(js), deadline=js.setup_deadline)
        if self.usage is not None:
            self.usage.republish_recent(self.jobs)
        # Nodes that went silent before we led, or while no requester ran, lose their
        # work once every node has had `disconnected_after` to be heard by us.
        self._silent_check = max(time.monotonic(), self.started_at + cfg.disconnected_after)
        self._next_expiry = time.monotonic() + self._expire_every

    async def stop(self) -> None:
        if self._created is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._created.unsubscribe()
            self._created = None
        for part in (self.scheduler, self.exec_consumer):
            if part is not None:
                await part.close()
        self.scheduler = self.exec_consumer = self.reconciler = self.drainer = None
        self.link.epoch = 0  # its cancels now carry the new leader's (NodeLink.leader_epoch)
        self.jobs.follow()

    def queued(self) -> list[Job] | None:
        """The jobs waiting to be placed, in order; None unless this requester leads."""
        return None if self.scheduler is None else self.scheduler.queued()

    # -- inputs from the rest of the requester ------------------------------------------
    def kick(self, job_id: str) -> None:
        if self.scheduler is not None:
            self.scheduler.kick(job_id)

    async def _on_created(self, msg: Msg) -> None:
        """Another requester created a job, or handed over one it took: read it now (our
        watch may lag) and place it."""
        job_id = msg.data.decode(errors="replace")
        if self.scheduler is None or not JOB_ID.match(job_id):
            return
        record = self.jobs.record(job_id)
        if record is None or record.placer not in ("", self.config.name):
            with contextlib.suppress(Exception):  # the tick finds it in any case
                await self.jobs.fresh(job_id)
        self.kick(job_id)

    def job_seen(self, job: Job) -> None:
        """A job another requester (or we) stored: a fresh one wants placing now."""
        if self.scheduler is not None and job.state is JobState.PENDING and not job.executions:
            self.scheduler.kick(job.job_id)

    async def reconcile(self, node_id: str, held: list[str]) -> list[str]:
        return [] if self.reconciler is None else await self.reconciler.check(node_id, held)

    def forget(self, node_id: str) -> None:
        if self.reconciler is not None:
            self.reconciler.forget(node_id)

    def follow(self, event: NodeEvent) -> None:
        """Lost nodes lose their executions; a lost node heard from again cancels them.

        Only a move away from HEALTHY/UNHEALTHY counts as lost: after a restart every
        node is UNKNOWN without any move, and its executions carry on.
        """
        scheduler = self.scheduler
        if scheduler is None:
            return
        seen = (Health.HEALTHY, Health.UNHEALTHY)
        if event.event == "deleted" or (
            event.event == "health" and event.new == Health.UNKNOWN and event.old in seen
        ):
            scheduler.node_lost(event.node_id)
        elif event.event == "health" and event.old == Health.UNKNOWN and event.new in seen:
            scheduler.node_back(event.node_id)

    # -- periodic -----------------------------------------------------------------------
    @property
    def _expire_every(self) -> float:
        # A short retention (tests, small setups) is looked at more often than a minute.
        return min(EXPIRE_EVERY, self.config.job_retention / 10) or EXPIRE_EVERY

    async def tick(self) -> None:
        """The leader's periodic checks (the requester's health loop calls this)."""
        if self.scheduler is None:
            return
        now = time.monotonic()
        if self._silent_check is not None and now >= self._silent_check:
            self._silent_check = None
            self._lose_silent_nodes()
        if self.drainer is not None:
            await self.drainer.tick()
        if now >= self._next_expiry:
            self._next_expiry = now + self._expire_every
            try:
                await self.jobs.expire(self.config.job_retention)
            except Exception:  # NATS trouble: the next round tries again
                log.exception("deleting finished jobs failed")
        if self.pruner is not None:
            try:
                await self.pruner.tick(now)
            except Exception:  # NATS trouble: the next round tries again
                log.exception("pruning UNKNOWN nodes failed")

    def _lose_silent_nodes(self) -> None:
        """Nodes holding work that no heartbeat reached lose it, as if seen going away.

        Health ages only nodes heard from, so a node that died while no requester ran
        (or before this one led) would otherwise keep its jobs RUNNING for good.
        """
        assert self.scheduler is not None
        for node_id in sorted(self.jobs.active_nodes()):
            if self.liveness.health(node_id) is Health.UNKNOWN:
                log.warning(
                    "node %s not heard from in the %gs since the requester started; "
                    "its executions are LOST",
                    node_id,
                    self.config.disconnected_after,
                    extra={"node_id": node_id},
                )
                self.scheduler.node_lost(node_id)
