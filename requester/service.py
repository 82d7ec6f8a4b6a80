"""The requester daemon: one class owns its lifecycle (start → serve → close)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from types import TracebackType

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from hivectl.core import codec
from hivectl.core.auth import Identity
from hivectl.core.bus import connect_daemon
from hivectl.core.config import RequesterConfig
from hivectl.core.daemon import Status, sd_notify, settle_memory, until_stopped
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import Job
from hivectl.core.metrics import MetricsServer
from hivectl.core.models import NodeEvent, build_models
from hivectl.core.subjects import Subjects
from hivectl.core.users import ADMIN_USER
from requester import wiring
from requester.duties import LeaderDuties
from requester.eventlist import EventApi
from requester.events import Events
from requester.gate import UserGate
from requester.identity import cluster_identity
from requester.jobs.api import JobApi
from requester.jobs.assist import Assist
from requester.jobs.consumer import ExecConsumer
from requester.jobs.fairshare import FairShare
from requester.jobs.records import JobStore
from requester.jobs.scheduler import Scheduler
from requester.jobs.streams import ensure_job_streams
from requester.leadership import Leadership
from requester.metrics import serve_metrics
from requester.nodes.api import NodeApi
from requester.nodes.link import NodeLink
from requester.nodes.liveness import Liveness
from requester.nodes.membership import Membership
from requester.nodes.prune import Pruner
from requester.nodes.registry import Registry
from requester.nodes.tokens import Tokens
from requester.ownnats import OwnNats
from requester.presence import Presence, own_record, requester_info
from requester.quotas import QuotaApi, QuotaBook
from requester.routing import ACTOR, ApiRouter
from requester.store import Store, open_store
from requester.usage.service import Usage
from requester.users import Users

log = logging.getLogger("hive.requester")
REQUESTER_AUTH_HINT = (
    "give the requester NATS credentials that server accepts "
    "(hive-requester run --credentials PATH, or [nats] credentials_file / user and password)"
)
SETTLE_REQUESTS = 5.0  # seconds a closing requester gives the API requests it is serving


class Requester:
    def __init__(self, config: RequesterConfig) -> None:
        self.config = config
        self.subjects = Subjects(config.nats.prefix)
        self.status = Status.INIT
        self.stopping = asyncio.Event()
        self.embedded: EmbeddedNats | None = None
        self.nc: Client | None = None
        self._subs: list[Subscription] = []
        self._started_at = time.monotonic()
        self.liveness = Liveness(
            config.unhealthy_after, config.disconnected_after, self._node_event
        )
        self.identity: Identity | None = None
        self.events: Events | None = None
        self.registry: Registry | None = None
        self.tokens: Tokens | None = None
        self.quotas = QuotaBook(self.subjects.quotas_bucket)
        self.quota_api = QuotaApi(
            self.quotas, limits=codec.Limits(max_bytes=config.max_payload), known=self._user_known
        )
        self.pruner: Pruner | None = None
        self.membership: Membership | None = None
        self.node_api: NodeApi | None = None
        self.metrics_port: int | None = None
        self._metrics: MetricsServer | None = None
        self.link: NodeLink | None = None
        self.jobs: JobStore | None = None
        self.job_api: JobApi | None = None
        self.event_api: EventApi | None = None
        self.duties: LeaderDuties | None = None  # what only the leader does
        self.assist: Assist | None = None  # what a follower places itself (assist.py)
        self.leadership: Leadership | None = None
        self.presence: Presence | None = None  # the cluster's requesters, for node list
        self.users: Users | None = None
        self.gate: UserGate | None = None  # who is asking: users, or the operator
        self.usage: Usage | None = None  # usage accounting and the nodes' reliability
        self.own_nats = OwnNats(config, self.subjects, on_crash=self.stopping.set)

    @property
    def nats_url(self) -> str:
        return self.embedded.url if self.embedded else self.config.nats.url

    async def start(self) -> None:
        """Bring up NATS (embedded by default), state and subscriptions. Idempotent.

        A stop (SIGTERM) while starting cuts the start short: the status stays STARTING
        and `close()` takes down what was brought up.
        """
        if self.status is not Status.INIT:
            return
        self.status = Status.STARTING
        # What the requester does of its own accord is done as itself: every task made
        # from here on (subscriptions, watches, the health loop) inherits this, and an
        # API request names its operator instead while it is handled.
        ACTOR.set(f"requester:{self.config.name}")
        if not await until_stopped(self.stopping, self._start()):
            log.info("requester %s stopped while starting", self.config.name)
            return
        assert self.registry is not None
        self.status = Status.RUNNING
        log.info(
            "requester %s serving on %s (%d nodes known)",
            self.config.name,
            self.nats_url,
            len(self.registry),
        )
        # Only now: NATS is connected, streams and buckets exist, every subscription is
        # live (flushed in _subscribe), so a unit ordered After= this one can use the API.
        # Everything loaded so far (records, modules) lives as long as the daemon.
        settle_memory()
        sd_notify(f"READY=1\nSTATUS=serving on {self.nats_url}, {len(self.registry)} nodes known")

    async def _start(self) -> None:
        build_models()  # before any thread (metrics, key derivation) can race to
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        nats_settings = cfg.nats
        if cfg.embedded.enabled:
            self.embedded = await self.own_nats.start()
            # It admits role credentials only: use ours.
            nats_settings = cfg.nats.model_copy(
                update={
                    "url": self.nats_url,
                    "credentials_file": self.credentials_dir / "requester.toml",
                }
            )
        self.nc = await connect_daemon(
            nats_settings,
            name=f"hive-requester:{cfg.name}",
            auth_hint=REQUESTER_AUTH_HINT,
            inbox_prefix=self.subjects.requester_inbox,
        )
        # Calls retried through leader elections up to store_deadline (< hivectl's 5s): a
        # store that does not answer gets an error reply before the client gives up on us.
        js = open_store(self.nc, cfg)
        self.identity = await cluster_identity(js, self.subjects, cfg.data_dir)
        self.events = Events(self.nc, self.subjects)
        await self.events.setup(js)
        self.registry = Registry(self.subjects.nodes_bucket, self.identity, self._node_event)
        await self.registry.start(js)
        self.presence = Presence(
            self.subjects.leases_bucket,
            own_record(cfg.name, self.identity.public_key, requester_info()),
            cfg.leader_lease,
            epoch=lambda: self.leadership.epoch if self.leadership else 0,
        )
        limits = codec.Limits(max_bytes=cfg.max_payload)
        self.tokens = Tokens(self.subjects.tokens_bucket, self.events.token, limits)
        await self.tokens.start(js)
        self.usage = Usage(self.subjects, js, resolve_node=self.registry.resolve, limits=limits)
        own = self.credentials_dir / "user.toml" if self.embedded else None
        self.users, self.gate = await wiring.users(
            js, self.subjects, self.identity, cfg, own, self.events.user
        )
        await self.quotas.start(js)
        self._build_handlers()
        await self._start_jobs(js)
        for api in self.routers:
            api.store_trouble, api.gate = self.own_nats.trouble, self.gate
        await self._subscribe()
        await self._lead_when_elected(js)
        if cfg.metrics.enabled:
            self._metrics = serve_metrics(self, cfg.metrics)
            self.metrics_port = self._metrics.port

    @property
    def routers(self) -> list[ApiRouter]:  # every API noun this requester serves
        usage = self.usage.api if self.usage is not None else None
        found = (self.node_api, self.job_api, self.event_api, self.users, usage, self.quota_api)
        return [r for r in found if r is not None]

    @property
    def credentials_dir(self) -> Path:
        """Where the embedded server's role credentials live (one TOML file per role)."""
        return self.own_nats.credentials_dir

    @property
    def failure(self) -> str:
        """Why the requester stopped on its own (exit code 1), if it did."""
        return self.own_nats.failure

    def _build_handlers(self) -> None:
        """The node side: membership, pruning and the node API (wiring.node_side)."""
        assert self.registry is not None and self.identity is not None
        assert self.presence is not None and self.tokens is not None
        assert self.usage is not None
        self.membership, self.pruner, self.node_api = wiring.node_side(
            self.config,
            self.subjects,
            self.registry,
            self.liveness,
            self.identity,
            self.tokens,
            self.usage,
            requesters=self.presence.views,
            started_at=self._started_at,
            reconcile=self._reconcile,
            remove=self._remove_node,
            forget=self._forget_node,
            on_event=self._node_event,
            max_payload=self._max_payload(),
        )

    async def _start_jobs(self, js: Store) -> None:
        """Streams, the job store and its API (the leader's part: `_lead_when_elected`)."""
        assert self.nc is not None and self.registry is not None
        cfg = self.config
        await ensure_job_streams(js, self.subjects)
        self.link = NodeLink(self.nc, self.subjects, self.registry, cfg.offer_timeout)
        self.jobs = JobStore(self.nc, self.subjects, on_cancel=self.link.cancel)
        self.jobs.owners.share = FairShare(cfg.scheduler.fair_share_half_life)
        parts = (self.nc, self.subjects, self.registry, self.liveness, self.jobs, self.link)
        self.duties = duties = LeaderDuties(cfg, *parts, started_at=self._started_at)
        duties.pruner = self.pruner
        duties.quotas = self.quotas.effective
        self.jobs.watchers.append(duties.job_seen)
        assert self.usage is not None
        await self.usage.start(js, self.jobs)
        duties.usage = self.usage
        await self.jobs.start(js)
        self.jobs.indexed = cfg.scheduler.followers_place
        self.jobs.follow()  # until this requester leads (duties.start)
        assert self.presence is not None
        self.assist = wiring.assist(
            cfg, self.jobs, self.registry, self.liveness, self.link, self.usage, self.presence,
            leading=lambda: duties.active, quotas=self.quotas.effective, nudge=self._nudge,
        )  # fmt: skip
        limits = codec.Limits(max_bytes=cfg.max_payload)
        self.job_api, self.event_api = wiring.job_api(
            self.jobs, js, self.subjects, kick=self._created, placer=self._placer,
            max_payload=self._max_payload(), limits=limits,
            quotas=self.quotas.effective,
            queue=lambda: self.duties.queued() if self.duties else None,
            forward=wiring.leader_asker(self.nc, self.subjects, cfg.store_deadline),
        )  # fmt: skip

    async def _lead_when_elected(self, js: Store) -> None:
        """Take part in the election; lead at once when no other requester does."""
        assert self.duties is not None
        duties = self.duties

        async def elected(epoch: int) -> None:
            assert self.leadership is not None
            await duties.start(js, epoch, self.leadership.valid)

        async def deposed(why: str) -> None:
            await duties.stop()

        self.leadership = Leadership(
            self.subjects.leases_bucket,
            self.config.name,
            self.config.leader_lease,
            on_elected=elected,
            on_deposed=deposed,
        )
        await self.leadership.start(js)
        assert self.presence is not None
        await self.presence.start(js)  # the election made the bucket

    @property
    def scheduler(self) -> Scheduler | None:
        return self.duties.scheduler if self.duties else None

    @property
    def exec_consumer(self) -> ExecConsumer | None:
        return self.duties.exec_consumer if self.duties else None

    def _max_payload(self) -> int:
        assert self.nc is not None
        return min(self.config.max_payload, self.nc.max_payload)

    async def _subscribe(self) -> None:
        assert self.nc is not None and self.membership is not None
        subs = await wiring.subscribe(
            self.nc, self.subjects, self.membership, self.routers, self.job_api
        )
        self._subs.extend(subs)

    async def serve(self) -> None:
        """Start, then run the periodic checks until `stop()`; always close."""
        try:
            await self.start()
            if self.status is Status.RUNNING:
                await self._health_loop()
        finally:
            await self.close()

    async def _health_loop(self) -> None:
        """The periodic checks: node health, the embedded store, the leader's duties."""
        interval = self.config.health_check_interval
        while not self.stopping.is_set():
            self.liveness.sweep(time.monotonic())
            await self.liveness.publish()
            await self.own_nats.recover()
            if self.duties is not None:
                await self.duties.tick()
            if self.usage is not None:
                self.usage.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval)

    def stop(self) -> None:
        self.stopping.set()

    async def close(self) -> None:
        """Drain NATS (in-flight requests finish), then stop the embedded server."""
        if self.status in (Status.CLOSING, Status.CLOSED):
            return
        self.status = Status.CLOSING
        sd_notify("STOPPING=1\nSTATUS=draining")
        # Stop making decisions before the connection goes: nothing half-placed is left
        # that the store does not already record. The lease goes first, so another
        # requester leads at once.
        if self.leadership is not None:
            await self.leadership.close()
        if self.presence is not None:
            await self.presence.close()
        if self.duties is not None:
            await self.duties.stop()
        if self.assist is not None:
            await self.assist.close(SETTLE_REQUESTS)
        await self._settle_requests()
        # Usage first: its publisher stores what the last writes ended.
        parts = (self.usage, self.jobs, self.link, self.tokens, self.users, self.quotas)
        for part in (*parts, self.registry):
            if part is not None:
                await part.close()
        if self.nc is not None and not self.nc.is_closed:
            try:
                # With its server gone a connection cannot drain; closing is enough.
                await (self.nc.close() if self.failure else self.nc.drain())
            except Exception as exc:
                log.debug("drain failed: %s", exc)
        await self.own_nats.stop()
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.close)
            self._metrics = None
        self.status = Status.CLOSED
        log.info(
            "requester %s stopped after %.1fs (pid %d)",
            self.config.name,
            time.monotonic() - self._started_at,
            os.getpid(),
        )

    async def _settle_requests(self) -> None:
        """API requests being served finish before the stores they use close."""
        left = await asyncio.gather(*(api.settle(SETTLE_REQUESTS) for api in self.routers))
        if sum(left):
            log.warning("closing with %d API requests unanswered", sum(left))

    def _placer(self, job: Job) -> str:
        """Who places a job submitted here: this follower now and then (assist.py)."""
        return self.assist.placer(job) if self.assist is not None else ""

    def _created(self, job_id: str) -> None:
        """A job this requester created: placed here when it leads or took it, else the
        leader is told at once (its watch of the bucket may be busy with its own writes)."""
        if self.duties is not None and self.duties.active:
            self.duties.kick(job_id)
        elif self.assist is None or not self.assist.created(job_id):
            self._nudge(job_id)

    def _nudge(self, job_id: str) -> None:
        """Tell the leader of a job to place (a lost nudge: its tick finds the job)."""
        if self.nc is not None:
            task = asyncio.ensure_future(
                self.nc.publish(self.subjects.job_created, job_id.encode())
            )
            task.add_done_callback(lambda t: t.exception())

    def _user_known(self, name: str) -> bool:
        return name == ADMIN_USER or (self.users is not None and self.users.get(name) is not None)

    async def _reconcile(self, node_id: str, held: list[str]) -> list[str]:
        return [] if self.duties is None else await self.duties.reconcile(node_id, held)

    async def _remove_node(self, node_id: str, reason: str) -> None:
        """Delete a node's record (pruning), as an operator's `node delete` does."""
        assert self.registry is not None
        await self.registry.delete(node_id, reason)
        self._forget_node(node_id)

    def _forget_node(self, node_id: str) -> None:
        self.liveness.forget(node_id)
        if self.membership is not None:
            self.membership.forget(node_id)
        if self.duties is not None:
            self.duties.forget(node_id)

    async def _node_event(self, event: NodeEvent) -> None:
        """Approvals and deletions come from this requester's API: published here. Health
        changes every requester sees: only the leader publishes and acts on them."""
        leading = self.duties is not None and self.duties.active
        if event.event == "health" and not leading:
            return
        if self.events is not None:
            await self.events.node(event)
        if self.duties is not None:
            self.duties.follow(event)

    async def __aenter__(self) -> Requester:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
