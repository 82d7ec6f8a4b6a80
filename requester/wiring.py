"""What the requester serves: the node API with the verbs of their own modules, and the
subscriptions that carry nodes' messages and operators' requests to their handlers."""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError

from hivectl.core import codec
from hivectl.core.api import NodeView
from hivectl.core.subjects import Subjects
from requester.jobs.api import Forward, JobApi
from requester.jobs.fenced import JobError
from requester.nodes.api import NodeApi
from requester.nodes.labels import LabelApi
from requester.nodes.liveness import Liveness
from requester.nodes.membership import Membership
from requester.nodes.nodeops import NodeOps
from requester.nodes.prune import Pruner
from requester.nodes.registry import EventSink, Registry
from requester.nodes.tokens import Tokens
from requester.quotas import QuotaApi

# Heartbeats arrive in bursts; a deep buffer absorbs them instead of dropping any.
NODE_PENDING_MSGS = 1_000_000
NODE_PENDING_BYTES = 512 * 1024 * 1024


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
    )
    labels = LabelApi(registry, requester_id=requester_id, on_event=on_event, limits=limits)
    ops = NodeOps(registry, requester_id=requester_id, limits=limits)
    for verbs in (labels.handlers(), tokens.handlers(), pruner.handlers(), ops.handlers):
        api.handlers.update(verbs)
    return api


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
    nodes: NodeApi,
    jobs: JobApi | None,
    quotas: QuotaApi | None = None,
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
        await nc.subscribe(s.api("node", "*"), queue=queue, cb=nodes.on_request),
    ]
    if jobs is not None:
        subs.append(await nc.subscribe(s.api("job", "*"), queue=queue, cb=jobs.on_request))
        job_api = jobs

        async def leader_queue(msg: Msg) -> None:
            reply = await job_api.on_leader_queue(msg.data)
            if reply is not None and msg.reply:
                await msg.respond(reply)

        # Every requester hears it; the leader alone answers.
        subs.append(await nc.subscribe(s.leader_queue, cb=leader_queue))
    if quotas is not None:
        subs.append(await nc.subscribe(s.api("quota", "*"), queue=queue, cb=quotas.on_request))
    await nc.flush()
    return subs
