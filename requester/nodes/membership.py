"""What nodes send the requester: registration, info, resources, heartbeats, leave.

Every message is checked before it touches state: the body must decode, the MAC (or,
for registration, the signature) must match the key bound to the node id in the
subject, the body's node id must equal the subject's, and a sequence number must move
forward. Anything else is dropped, counted by reason, and logged at most once a minute
per node and reason. Nothing a node sends can set its approval or its operator labels:
the models have no such field, and any extra field is ignored. Labels a node reports
under the reserved `hive.io/` prefix are ignored (counted, and logged once per node):
those Hive derives itself.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.msg import Msg

from hivectl.core import auth, codec
from hivectl.core.labels import RESERVED_PREFIX, split_reserved
from hivectl.core.models import (
    ErrorReply,
    Heartbeat,
    InfoReply,
    InfoUpdate,
    Leave,
    Message,
    NodeInfo,
    NodeRecord,
    RegisterReply,
    RegisterRequest,
    ResourceUpdate,
)
from hivectl.core.subjects import Subjects
from requester.drops import Dropped, Drops
from requester.nodes.liveness import Liveness
from requester.nodes.registry import Registry, RegistryError
from requester.nodes.tokens import Tokens

log = logging.getLogger("hive.requester.membership")
M = TypeVar("M", bound=Message)
S = TypeVar("S", Heartbeat, ResourceUpdate, Leave)  # the sequenced messages nodes publish
# (node id, the executions it reports holding) -> those it should stop
Reconcile = Callable[[str, list[str]], Awaitable[list[str]]]


class Membership:
    def __init__(
        self,
        subjects: Subjects,
        registry: Registry,
        liveness: Liveness,
        identity: auth.Identity,
        *,
        cluster: str,
        requester_id: str,
        auto_approve: bool,
        limits: codec.Limits,
        lost_after: float = 0.0,
        reconcile: Reconcile | None = None,
        tokens: Tokens | None = None,
    ) -> None:
        self._subjects = subjects
        self._registry = registry
        self._liveness = liveness
        self._identity = identity
        self._cluster = cluster
        self._requester_id = requester_id
        self._auto_approve = auto_approve
        self._limits = limits
        self._lost_after = lost_after
        self._reconcile = reconcile
        self._tokens = tokens  # enrollment tokens, for registrations that carry one
        self._seq: dict[tuple[str, str], int] = {}
        self._drops = Drops(subjects, log, "message")
        self.received: Counter[str] = Counter()
        self.rejected = self._drops.counts
        self.labels_dropped = 0  # messages whose reserved labels were ignored
        self._warned: dict[str, list[str]] = {}  # node id -> the reserved keys logged

    # -- publish handlers -----------------------------------------------------------
    async def on_heartbeat(self, msg: Msg) -> None:
        beat = self._accept(msg, Heartbeat, "heartbeat")
        if beat is None:
            return
        self._liveness.heard(beat.node_id, time.monotonic())

    async def on_resources(self, msg: Msg) -> None:
        update = self._accept(msg, ResourceUpdate, "resources")
        if update is None:
            return
        self._liveness.record_resources(update.node_id, update.resources)

    async def on_leave(self, msg: Msg) -> None:
        leave = self._accept(msg, Leave, "leave")
        if leave is None:
            return
        self._liveness.left(leave.node_id, leave.reason)

    # -- request handlers -------------------------------------------------------------
    async def on_info(self, msg: Msg) -> None:
        node_id = self._subjects.node_id_from(msg.subject)
        if self._registry.get(node_id) is None:
            self._drop(msg.subject, Dropped("unknown_node", f"no record for node {node_id!r}"))
            await self._reply(msg, InfoReply(known=False))
            return
        try:
            update = self._open(msg, InfoUpdate)
            if update.executions is not None:
                self._check_seq(node_id, "info", update.seq)
            info = self._own_labels(node_id, update.info)
            record = await self._registry.update_info(update.node_id, info)
        except Dropped as drop:
            self._drop(msg.subject, drop)
            await self._reply(msg, ErrorReply(code=drop.code, reason=drop.reason))
            return
        except RegistryError as exc:
            await self._reply(msg, ErrorReply(code=exc.code, reason=exc.reason))
            return
        self.received["info"] += 1
        stale: list[str] = []
        if update.executions is not None and self._reconcile is not None:
            stale = await self._reconcile(node_id, update.executions)
        reply = InfoReply(
            known=True, approval=record.approval, lost_after=self._lost_after, stale=stale
        )
        await self._reply(msg, reply)

    async def on_register(self, msg: Msg) -> None:
        try:
            request = self._open_registration(msg.data)
            info = self._own_labels(request.node_id, request.info)
            record = await self._admit(request.model_copy(update={"info": info}))
        except Dropped as drop:
            self._drop(msg.subject, drop)
            await self._reply(msg, ErrorReply(code=drop.code, reason=drop.reason))
            return
        except RegistryError as exc:
            self._drop(msg.subject, Dropped(exc.code, exc.reason))
            await self._reply(msg, ErrorReply(code=exc.code, reason=exc.reason))
            return
        self.received["register"] += 1
        reply = RegisterReply(
            node_id=record.node_id,
            approval=record.approval,
            requester_key=self._identity.public_key,
            cluster=self._cluster,
            lost_after=self._lost_after,
            reason=record.reason,
        )
        await self._reply(msg, reply)

    async def _admit(self, request: RegisterRequest) -> NodeRecord:
        if request.token and self._tokens is not None:
            return await self._tokens.admit(self._registry, request, self._auto_approve)
        return await self._registry.register(
            request.node_id, request.public_key, request.info, self._auto_approve
        )

    # -- checks -----------------------------------------------------------------------
    def _accept(self, msg: Msg, expect: type[S], kind: str) -> S | None:
        """A published node message that is authentic and in order, counted as `kind`;
        None when it is dropped (counted and logged by `_drop`)."""
        try:
            message = self._open(msg, expect)
            self._check_seq(message.node_id, kind, message.seq)
        except Dropped as drop:
            self._drop(msg.subject, drop)
            return None
        self.received[kind] += 1
        return message

    def _open(self, msg: Msg, expect: type[M]) -> M:
        """Authenticate and decode a node message; its ids must agree with the subject."""
        node_id = self._subjects.node_id_from(msg.subject)
        key = self._registry.message_key(node_id)
        if key is None:
            raise Dropped("unknown_node", f"no record for node {node_id!r}")
        try:
            payload = auth.open_sealed(msg.data, key)
        except auth.AuthError as exc:
            raise Dropped("unauthenticated", str(exc)) from None
        try:
            message = codec.decode(payload, expect, self._limits)
        except codec.CodecError as exc:
            raise Dropped(exc.code, exc.reason) from None
        if getattr(message, "node_id", None) != node_id:
            raise Dropped("id_mismatch", f"body speaks for another node than subject {node_id!r}")
        return message

    def _open_registration(self, data: bytes) -> RegisterRequest:
        try:
            request = codec.decode(auth.split_signed(data), RegisterRequest, self._limits)
            auth.open_signed(data, request.public_key)
        except codec.CodecError as exc:
            raise Dropped(exc.code, exc.reason) from None
        except auth.AuthError as exc:
            raise Dropped("unauthenticated", str(exc)) from None
        if request.node_id == self._requester_id:
            raise Dropped("reserved_id", f"node id {request.node_id!r} is the requester's")
        return request

    def _own_labels(self, node_id: str, info: NodeInfo) -> NodeInfo:
        """`info` without the labels it has under the reserved prefix: counted each time,
        logged once per node (again only if it claims other ones), as an agent sends the
        same info every minute."""
        kept, dropped = split_reserved(info.labels)
        if not dropped:
            return info
        self.labels_dropped += 1
        if self._warned.get(node_id) != dropped:
            self._warned[node_id] = dropped
            log.warning(
                "node %s reports labels under %s, which only Hive sets: ignored %s",
                node_id,
                RESERVED_PREFIX,
                ", ".join(dropped)[:512],
                extra={"node_id": node_id, "code": "reserved_label"},
            )
        return info.model_copy(update={"labels": kept})

    def _check_seq(self, node_id: str, kind: str, seq: int) -> None:
        """Replay protection: each node's sequence moves forward, per message kind."""
        key = (node_id, kind)
        if seq <= self._seq.get(key, -1):
            raise Dropped("replay", f"{kind} sequence {seq} is not newer than the last")
        self._seq[key] = seq

    def _drop(self, subject: str, drop: Dropped) -> None:
        self._drops.record(subject, drop)

    def forget(self, node_id: str) -> None:
        """A deleted node starts afresh if it registers again."""
        self._warned.pop(node_id, None)
        for kind in ("heartbeat", "resources", "leave", "info"):
            self._seq.pop((node_id, kind), None)

    async def _reply(self, msg: Msg, message: Message) -> None:
        if msg.reply:
            await msg.respond(codec.encode(message))
