"""What the requester serves: the node API with the verbs of their own modules, and the
subscriptions that carry nodes' messages and operators' and users' requests to their
handlers (each API router on `api` and on `uapi`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError

from hivectl.core import codec
from hivectl.core.api import NodeView
from hivectl.core.auth import Identity
from hivectl.core.config import RequesterConfig
from hivectl.core.jobs import Job
from hivectl.core.quotas import Quota
from hivectl.core.reliability import Reliability
from hivectl.core.subjects import Subjects
from hivectl.core.users import Role
from requester.eventlist import EventApi
from requester.gate import UserGate
from requester.jobs.api import Forward, JobApi
from requester.jobs.assist import Assist
from requester.jobs.fenced import JobError
from requester.jobs.outputs import JobOutputs
from requester.jobs.records import JobStore
from requester.nodes.api import NodeApi
from requester.nodes.labels import LabelApi
from requester.nodes.link import NodeLink
from requester.nodes.liveness import Liveness
from requester.nodes.membership import Membership
from requester.nodes.nodeops import NodeOps
from requester.nodes.prune import Pruner
from requester.nodes.registry import EventSink, Registry
from requester.nodes.tokens import Tokens
from requester.presence import Presence
from requester.routing import ApiRouter
from requester.store import Store
from requester.usage.service import Usage
from requester.users import Users, UserSink

# Heartbeats arrive in bursts; a deep buffer absorbs them instead of dropping any.
NODE_PENDING_MSGS = 1_000_000
NODE_PENDING_BYTES = 512 * 1024 * 1024


def node_side(
    cfg: RequesterConfig,
    subjects: Subjects,
    registry: Registry,
    liveness: Liveness,
    identity: Identity,
    tokens: Tokens,
    usage: Usage,
    *,
    requesters: Callable[[], list[NodeView]],
    started_at: float,
    reconcile: Callable[[str, list[str]], Awaitable[list[str]]],
    remove: Callable[[str, str], Awaitable[None]],
    forget: Callable[[str], None],
    on_event: EventSink,
    max_payload: int,
) -> tuple[Membership, Pruner, NodeApi]:
    """What serves nodes and their operators: membership (registration, info,
    heartbeats), pruning of long-UNKNOWN nodes, and the node API."""
    limits = codec.Limits(max_bytes=cfg.max_payload)
    membership = Membership(
        subjects,
        registry,
        liveness,
        identity,
        cluster=cfg.cluster_name,
        requester_id=cfg.name,
        auto_approve=cfg.auto_approve,
        limits=limits,
        lost_after=cfg.disconnected_after,
        reconcile=reconcile,
        tokens=tokens,
    )
    pruner = Pruner(
        registry, liveness, remove, started_at=started_at, after=cfg.node_prune_after, limits=limits
    )
    api = node_api(
        registry,
        liveness,
        requester_id=cfg.name,
        requesters=requesters,
        tokens=tokens,
        pruner=pruner,
        max_payload=max_payload,
        on_delete=forget,
        on_event=on_event,
        limits=limits,
        reliability=usage.reliability,
        scores=usage.book.scores,
    )
    return membership, pruner, api


def node_api(
    registry: Registry,
    liveness: Liveness,
    *,
    requester_id: str,
    requesters: Callable[[], list[NodeView]],
    tokens: Tokens,
    pruner: Pruner,
    max_payload: int,
    on_delete: Callable[[str], None],
    on_event: EventSink,
    limits: codec.Limits,
    reliability: Callable[[str], Reliability] | None = None,
    scores: Mapping[str, float] | None = None,
) -> NodeApi:
    """`hive.api.node.*`: list, get, approve, reject, delete, and the verbs of label,
    token, prune and cordon/drain, each served from its own module."""
    api = NodeApi(
        registry,
        liveness,
        requesters=requesters,
        max_payload=max_payload,
        on_delete=on_delete,
        limits=limits,
        reliability=reliability,
        scores=scores,
    )
    labels = LabelApi(registry, requester_id=requester_id, on_event=on_event, limits=limits)
    ops = NodeOps(registry, requester_id=requester_id, limits=limits)
    for verbs in (labels.handlers(), tokens.handlers(), pruner.handlers(), ops.handlers):
        api.handlers.update(verbs)
    # Node reads are for viewers; every other node verb keeps the default (operator).
    api.roles.update(list=Role.VIEWER, get=Role.VIEWER)
    return api


def job_api(
    jobs: JobStore, js: Store, subjects: Subjects, *, kick: Callable[[str], None],
    placer: Callable[[Job], str], max_payload: int, limits: codec.Limits,
    quotas: Callable[[str], Quota], queue: Callable[[], list[Job] | None], forward: Forward,
) -> tuple[JobApi, EventApi]:  # fmt: skip
    """`hive.api.job.*`: submit, list, get, executions, stop, and logs and result; and
    `hive.api.event.list`, the events for those who cannot read their stream."""
    api = JobApi(
        jobs, kick=kick, placer=placer, max_payload=max_payload, limits=limits,
        quotas=quotas, queue=queue, forward=forward,
    )  # fmt: skip
    outputs = JobOutputs(jobs, js, subjects, max_payload=max_payload, limits=limits)
    api.handlers.update(outputs.handlers())
    api.roles.update(outputs.roles())
    events = EventApi(js, subjects, jobs, max_payload=max_payload, limits=limits)
    return api, events


def assist(
    config: RequesterConfig, jobs: JobStore, registry: Registry, liveness: Liveness,
    link: NodeLink, usage: Usage, presence: Presence, *, leading: Callable[[], bool],
    quotas: Callable[[str], Quota], nudge: Callable[[str], None],
) -> Assist | None:  # fmt: skip
    """What a follower places itself: the jobs submitted to it while nothing waits (None:
    `[scheduler] followers_place` is off). Either way, a follower's cancels carry the
    leader's epoch."""
    link.leader_epoch = lambda: presence.leader()[1]
    if not config.scheduler.followers_place:
        return None
    return Assist(
        config.name, jobs, registry, liveness, link, leader=presence.leader, leading=leading,
        quotas=quotas, nudge=nudge, offer_timeout=config.offer_timeout,
        interval=config.scheduler_interval, scores=usage.book.scores, tiers=usage.book.tiers,
    )  # fmt: skip


async def users(
    js: Store,
    subjects: Subjects,
    identity: Identity,
    config: RequesterConfig,
    embedded_credentials: Path | None,
    on_event: UserSink,
) -> tuple[Users, UserGate]:
    """The users bucket and its API (`hive.api.user.*`), and the gate that knows them.
    A new user's file gets the NATS `user` role's credentials from
    `user_credentials_file`, else from the embedded server's own."""
    found = config.user_credentials_file or embedded_credentials
    api = Users(
        subjects.users_bucket,
        requester_key=identity.public_key,
        nats_credentials=lambda: found,
        on_event=on_event,
        limits=codec.Limits(max_bytes=config.max_payload),
    )
    await api.start(js)
    return api, UserGate(subjects, identity, api.get)


def leader_asker(nc: Client, s: Subjects, timeout: float) -> Forward:
    """A request only the leader answers (its queue), sent on by one that does not lead."""

    async def ask(data: bytes) -> bytes:
        try:
            msg = await nc.request(s.leader_queue, data, timeout=timeout)
        except NatsTimeoutError:
            raise JobError(
                "no_leader", "no requester leads the cluster at the moment; try again"
            ) from None
        return msg.data

    return ask


async def subscribe(
    nc: Client,
    s: Subjects,
    m: Membership,
    routers: list[ApiRouter],
    jobs: JobApi | None,
) -> list[Subscription]:
    """Requests go to one requester of the group; every requester hears publishes."""
    queue = s.requester_queue
    subs = [
        await nc.subscribe(s.node_register, queue=queue, cb=m.on_register),
        await nc.subscribe(s.node_wildcard("info"), queue=queue, cb=m.on_info),
        await nc.subscribe(
            s.node_wildcard("heartbeat"),
            cb=m.on_heartbeat,
            pending_msgs_limit=NODE_PENDING_MSGS,
            pending_bytes_limit=NODE_PENDING_BYTES,
        ),
        await nc.subscribe(
            s.node_wildcard("resources"),
            cb=m.on_resources,
            pending_msgs_limit=NODE_PENDING_MSGS,
            pending_bytes_limit=NODE_PENDING_BYTES,
        ),
        await nc.subscribe(s.node_wildcard("leave"), cb=m.on_leave),
    ]
    for router in routers:
        for subject in (s.api(router.noun, "*"), s.uapi(router.noun, "*")):
            subs.append(await nc.subscribe(subject, queue=queue, cb=router.on_request))
    if jobs is not None:
        job_api = jobs

        async def leader_queue(msg: Msg) -> None:
            reply = await job_api.on_leader_queue(msg.data)
            if reply is not None and msg.reply:
                await msg.respond(reply)

        # Every requester hears it; the leader alone answers.
        subs.append(await nc.subscribe(s.leader_queue, cb=leader_queue))
    await nc.flush()
    return subs
