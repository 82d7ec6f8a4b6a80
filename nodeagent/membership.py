"""Whether the requester knows this node, and what to do about it.

One `step()` per info interval: join (re-join with the sentinel's key, else register)
until the requester has accepted the node, then send an info update, which doubles as
the "am I still known?" check. The states an operator cares about:

- joined: the requester accepted the node (registration, or a re-join it recognised);
- removed: after that, an info reply said "unknown" (an operator deleted the node). The
  agent stays quiet until it is registered again by `hive-nodeagent register` or a
  restart, as the Bacalhau docs describe; a later "known" reply re-admits it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client

from hivectl.core import auth
from hivectl.core.config import NodeAgentConfig
from hivectl.core.models import Approval, ErrorReply, InfoReply, NodeInfo, RegisterReply
from hivectl.core.subjects import Subjects
from nodeagent import protocol
from nodeagent.identity import read_sentinel, write_sentinel
from nodeagent.protocol import UNAUTHENTICATED, LocalNode

log = logging.getLogger("hive.nodeagent")


@dataclass(frozen=True)
class Reports:
    """What info updates carry about executions, and what to do with the answer."""

    held: Callable[[], list[str]]  # the executions this node holds now
    next_seq: Callable[[], int]
    stop: Callable[[list[str]], None]  # the requester has these active elsewhere, or not at all

    def now(self) -> tuple[list[str], int]:
        return self.held(), self.next_seq()


class Membership:
    """The join / info state machine of one agent. Exchanges raise protocol.Unreachable."""

    def __init__(
        self,
        cfg: NodeAgentConfig,
        local: LocalNode,
        on_admitted: Callable[[], Awaitable[None]],
        request_timeout: float,
        reports: Reports | None = None,
    ) -> None:
        self.cfg = cfg
        self.local = local
        self.node_id = local.node_id
        self.subjects = Subjects(cfg.nats.prefix)
        self.request_timeout = request_timeout
        self.approval: Approval | None = None
        self.key: bytes | None = None  # the MAC key shared with the requester
        self.joined = False
        self.removed = False
        self.registrations = 0
        self.register_refusals = 0
        self.info_updates_sent = 0
        self._on_admitted = on_admitted  # first heartbeat and resources, at once
        self._reports = reports
        # After this long without our heartbeats the requester writes our work off (0:
        # it has not said); the agent stops that work itself before then.
        self.lost_after = 0.0
        self._rejoin_key = self._sentinel_key()  # dropped once the requester says no
        # What `hivectl node describe` shows: an operator compares the two before approving.
        self.fingerprint = auth.fingerprint(local.identity.public_key)
        self._extra = {"node_id": self.node_id}

    @property
    def active(self) -> bool:
        """Known to the requester now: heartbeats and resource reports should go out."""
        return self.joined and not self.removed and self.key is not None

    @property
    def interval(self) -> float:
        return self.cfg.info_update_interval

    async def step(self, nc: Client, info: NodeInfo) -> float:
        """One join or info exchange; returns how long to wait before the next."""
        if self.joined:
            return await self._refresh(nc, info)
        return await self._join(nc, info)

    async def _join(self, nc: Client, info: NodeInfo) -> float:
        """Re-join with the sentinel's key when there is one; else, or if refused, register."""
        if self._rejoin_key is not None:
            reply = await self._send_info(nc, info, self._rejoin_key)
            if isinstance(reply, InfoReply) and reply.known:
                self.key = self._rejoin_key
                await self._admitted(reply.approval, "re-joined the cluster")
                return self.interval
            why = reply.code if isinstance(reply, ErrorReply) else "unknown to the requester"
            log.info(
                "node %s cannot re-join (%s); registering", self.node_id, why, extra=self._extra
            )
            self._rejoin_key = None
        return await self._register(nc, info)

    async def _register(self, nc: Client, info: NodeInfo) -> float:
        identity = self.local.identity
        token = protocol.enrollment_token(self.cfg)
        reply = await protocol.register(
            nc, self.subjects, identity, self.node_id, info, self.request_timeout, token
        )
        if isinstance(reply, ErrorReply) or reply.node_id != self.node_id:
            self._refused(reply)
            return self.interval
        self.registrations += 1
        self.lost_after = reply.lost_after
        self.key = identity.message_key(reply.requester_key)
        sentinel = protocol.sentinel_for(reply, self.subjects)
        await asyncio.to_thread(write_sentinel, self.cfg.state_dir, sentinel)
        await self._admitted(reply.approval, "registered")
        if token:
            self._enrollment(reply)
        return self.interval

    def _enrollment(self, reply: RegisterReply) -> None:
        """Say what the enrollment token got this node, and if nothing, why."""
        extra = {**self._extra, "reason": reply.reason or None}
        if reply.approval is Approval.PENDING:
            log.warning(
                "node %s stays PENDING: %s; an operator must approve it "
                "(hivectl node approve %s), or start the agent with a valid token",
                self.node_id,
                reply.reason or "the enrollment token was not accepted",
                self.node_id,
                extra=extra,
            )
        elif reply.reason:
            log.info("node %s is %s: %s", self.node_id, reply.approval, reply.reason, extra=extra)

    def _refused(self, reply: RegisterReply | ErrorReply) -> None:
        """Log why; the caller retries every info interval (an operator may fix it)."""
        self.register_refusals += 1
        if isinstance(reply, RegisterReply):
            code, reason = "wrong_node", f"the reply is for node {reply.node_id}"
        else:
            code, reason = reply.code, reply.reason
        hint = ""
        if code == "key_mismatch":
            hint = f"; an operator must delete the old record (hivectl node delete {self.node_id})"
        log.warning(
            "registration of node %s refused (%s): %s%s; retrying every %gs",
            self.node_id,
            code,
            reason,
            hint,
            self.interval,
            extra={**self._extra, "code": code},
        )

    async def _refresh(self, nc: Client, info: NodeInfo) -> float:
        """The periodic info update of a node that has joined."""
        assert self.key is not None
        reply = await self._send_info(nc, info, self.key)
        if isinstance(reply, ErrorReply):
            return await self._info_refused(nc, info, reply)
        if not reply.known:
            self._mark_removed()
        elif self.removed:
            await self._admitted(reply.approval, "re-admitted")
        else:
            self._note_approval(reply.approval)
        return self.interval

    async def _info_refused(self, nc: Client, info: NodeInfo, reply: ErrorReply) -> float:
        extra = {**self._extra, "code": reply.code}
        if reply.code != UNAUTHENTICATED:
            log.warning(
                "info update of node %s refused (%s): %s",
                self.node_id,
                reply.code,
                reply.reason,
                extra=extra,
            )
            return self.interval
        # The requester's own key changed (say, a new data dir): ours is stale.
        # Registering again is idempotent there and keeps the node's approval.
        log.warning(
            "the requester no longer accepts node %s's messages (%s); registering again",
            self.node_id,
            reply.reason,
            extra=extra,
        )
        self.joined, self.key = False, None
        return await self._register(nc, info)

    async def _admitted(self, approval: Approval | None, how: str) -> None:
        if self.removed:
            how = "re-admitted"
        self.joined, self.removed = True, False
        if approval is not None:
            self.approval = approval
        log.info(
            "node %s %s (approval %s, key fingerprint %s)",
            self.node_id,
            how,
            self.approval or "?",
            self.fingerprint,
            extra={**self._extra, "fingerprint": self.fingerprint},
        )
        await self._on_admitted()

    def _mark_removed(self) -> None:
        if self.removed:
            return  # said once; the agent keeps asking quietly
        self.removed = True
        log.warning(
            "node %s was removed by an operator; run `hive-nodeagent register` or restart "
            "the agent to register again",
            self.node_id,
            extra=self._extra,
        )

    def _note_approval(self, approval: Approval | None) -> None:
        if approval is None or approval == self.approval:
            return
        log.info(
            "node %s approval changed: %s -> %s",
            self.node_id,
            self.approval or "?",
            approval,
            extra=self._extra,
        )
        self.approval = approval

    async def _send_info(self, nc: Client, info: NodeInfo, key: bytes) -> InfoReply | ErrorReply:
        held, seq = (None, 0) if self._reports is None else self._reports.now()
        reply = await protocol.info(
            nc, self.subjects, self.node_id, info, key, self.request_timeout, held, seq
        )
        self.info_updates_sent += 1
        if isinstance(reply, InfoReply) and reply.known:
            self.lost_after = reply.lost_after
            if reply.stale and self._reports is not None:
                self._reports.stop(reply.stale)
        return reply

    def _sentinel_key(self) -> bytes | None:
        """The key of an earlier registration in this cluster, if the sentinel has one."""
        sentinel = read_sentinel(self.cfg.state_dir)
        if sentinel is None or not sentinel.matches(self.node_id, self.subjects.prefix):
            return None
        try:
            return self.local.identity.message_key(sentinel.requester_key)
        except auth.AuthError as exc:
            log.warning("ignoring the sentinel: %s", exc, extra=self._extra)
            return None
