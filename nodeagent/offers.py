"""Offers, withdrawals and cancels from the requester: opened, checked, answered.

An offer (sealed with the node's message key) is accepted when the node runs fewer
executions than its `max_executions`, its engine is enabled here, the executor has
nothing against the spec, and the capacity ledger admits its resources (locking them).
A refusal for want of room says so (`OfferReply.full`); the limit is checked first, so
a node at its limit answers a burst of offers at almost no cost. An offer whose spec
this node's JobSpec rules refuse is refused for good (`OfferReply.permanent`: no node
would run it); every other refusal is transient. A repeated offer for a known execution
is answered "accepted" again and starts nothing. A withdrawal (the requester lost an
offer's answer) is answered "taken" when the node holds the execution (running, ended,
or its report pending), and otherwise makes the node refuse that offer for good, should
it still arrive. A request from a leader older than the newest one seen is refused
(`stale_epoch`): that leader lost the lead and has not noticed.

What admission needs of the executions it starts and stops is `Work`, which
`nodeagent.executions.Executions` provides.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from hivectl.core import auth, codec
from hivectl.core.jobs import Cancel, JobSpec, Offer, OfferReply, Withdraw
from hivectl.core.models import ErrorReply, Message, OkReply
from hivectl.core.subjects import Subjects
from nodeagent.capacity import Ledger, shortfall
from nodeagent.executors import Executor

log = logging.getLogger("hive.nodeagent")
M = TypeVar("M", bound=Message)
REMEMBER_WITHDRAWN = 10_000  # withdrawn offers refused should they still arrive


class Work(Protocol):
    """What admission needs of the node's executions."""

    def known(self, exec_id: str) -> bool:
        """Running here, or finished lately: an offer for it is a repeat."""

    def executor(self, engine: str) -> Executor | str:
        """The executor that runs `engine` jobs here, or why none can now."""

    def launch(
        self, executor: Executor, exec_id: str, job_id: str, spec: JobSpec, handle: str | None
    ) -> None:
        """Run an admitted execution, its resources locked in the ledger (`handle`:
        None, a new one)."""

    def cancel(self, exec_id: str, reason: str) -> bool:
        """Stop one execution; False when it is not running here."""

    def job_of(self, exec_id: str) -> str | None:
        """The job of an execution running here."""


class Offers:
    """The offer and cancel handlers: subscribed while the node takes work."""

    def __init__(
        self,
        subjects: Subjects,
        node_id: str,
        key: Callable[[], bytes | None],
        ledger: Ledger,
        work: Work,
    ) -> None:
        self.subjects = subjects
        self.node_id = node_id
        self.key = key
        self.ledger = ledger
        self.work = work
        self.epoch_seen = 0  # the newest leader's epoch among offers and cancels received
        self.accepted = 0
        self.rejected = 0
        # Offers the requester took back before this node took them: never taken later.
        self.withdrawn: OrderedDict[str, None] = OrderedDict()
        self._subs: list[Subscription] = []
        self._closing = False
        self._sync_lock = asyncio.Lock()

    @property
    def taking(self) -> bool:
        return bool(self._subs)

    async def sync(self, nc: Client, active: bool) -> None:
        """Take offers while the node is joined and active; stop when it is not."""
        async with self._sync_lock:
            if active and not self._subs and not self._closing:
                subject = self.subjects.compute
                subs = [
                    await nc.subscribe(subject(self.node_id, "offer"), cb=self._on_offer),
                    await nc.subscribe(subject(self.node_id, "cancel"), cb=self._on_cancel),
                    await nc.subscribe(subject(self.node_id, "withdraw"), cb=self._on_withdraw),
                ]
                try:
                    await nc.flush()  # the server has the interest before anyone is told
                finally:
                    self._subs = subs
            elif not active and self._subs:
                await self._unsubscribe()

    async def close(self) -> None:
        """Stop taking offers for good; any still coming are refused."""
        self._closing = True
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection closing: the subscription is gone anyway
                log.debug("unsubscribe failed: %s", exc)

    # -- requests ----------------------------------------------------------------------
    async def _on_offer(self, msg: Msg) -> None:
        offer = self._open(msg.data, Offer)
        if isinstance(offer, ErrorReply):
            self.rejected += 1
            log.warning("refused an offer (%s): %s", offer.code, offer.reason)
            await _respond(msg, self._unrunnable(msg.data) or offer)
            return
        reply = self._admit(offer)
        await _respond(msg, reply)
        if not reply.accepted:
            self.rejected += 1
            log.log(
                logging.DEBUG if reply.full else logging.INFO,  # a full node: routine, many
                "rejected execution %s: %s",
                offer.exec_id,
                reply.reason,
                extra=exec_fields(self.node_id, offer.job_id, offer.exec_id),
            )

    def _admit(self, offer: Offer) -> OfferReply:
        """Accepted when the execution runs (or already did); else declined, and why."""
        exec_id = offer.exec_id

        def declined(reason: str, *, full: bool = False) -> OfferReply:
            return OfferReply(exec_id=exec_id, accepted=False, reason=reason, full=full)

        if self.work.known(exec_id):
            return OfferReply(exec_id=exec_id, accepted=True)  # a repeat: not started twice
        if exec_id in self.withdrawn:
            return declined("the requester withdrew this offer")
        if self._closing:
            return declined("agent shutting down")
        # Before anything that costs: at its limit, a node may get many offers at once.
        full = self.ledger.full()
        if full is not None:
            return declined(full, full=True)
        executor = self.work.executor(offer.spec.engine)
        if isinstance(executor, str):
            return declined(executor)
        refusal = executor.refusal(offer.spec)
        if refusal is not None:
            return declined(refusal)
        wanted = offer.spec.resources.as_resources()
        short = shortfall(wanted, self.ledger.available)
        if short is not None:
            return declined(short, full=True)
        reason = self.ledger.admit(
            exec_id,
            wanted,
            job_id=offer.job_id,
            engine=executor.engine,
            spec=offer.spec.model_dump(mode="json"),
        )
        if reason is None:
            self.accepted += 1
            log.info(
                "accepted execution %s of job %s",
                exec_id,
                offer.job_id,
                extra=exec_fields(self.node_id, offer.job_id, exec_id),
            )
            self.work.launch(executor, exec_id, offer.job_id, offer.spec, handle=None)
            return OfferReply(exec_id=exec_id, accepted=True)
        return declined(reason)

    async def _on_cancel(self, msg: Msg) -> None:
        cancel = self._open(msg.data, Cancel)
        if isinstance(cancel, ErrorReply):
            await _respond(msg, cancel)
            return
        if self.work.cancel(cancel.exec_id, cancel.reason or "cancelled by the requester"):
            log.info(
                "cancelling execution %s: %s",
                cancel.exec_id,
                cancel.reason,
                extra=exec_fields(self.node_id, self.work.job_of(cancel.exec_id), cancel.exec_id),
            )
        await _respond(msg, OkReply(id=cancel.exec_id))

    async def _on_withdraw(self, msg: Msg) -> None:
        withdraw = self._open(msg.data, Withdraw)
        if isinstance(withdraw, ErrorReply):
            await _respond(msg, withdraw)
            return
        exec_id = withdraw.exec_id
        taken = self.work.known(exec_id) or exec_id in self.ledger.held
        if not taken:
            self.withdrawn[exec_id] = None
            while len(self.withdrawn) > REMEMBER_WITHDRAWN:
                self.withdrawn.popitem(last=False)
        reason = "" if taken else "withdrawn before this node took it"
        await _respond(msg, OfferReply(exec_id=exec_id, accepted=taken, reason=reason))

    def _open(self, data: bytes, expect: type[M]) -> M | ErrorReply:
        """The sealed request as `expect`, addressed to this node; else the error to reply."""
        key = self.key()
        if key is None:
            return ErrorReply(code="not_joined", reason="the node has not joined the cluster")
        try:
            message = codec.decode(auth.open_sealed(data, key), expect)
        except auth.AuthError as exc:
            return ErrorReply(code="unauthenticated", reason=str(exc))
        except codec.CodecError as exc:
            return exc.reply()
        if getattr(message, "node_id", None) != self.node_id:
            return ErrorReply(code="wrong_node", reason=f"this is node {self.node_id}")
        epoch = int(getattr(message, "epoch", 0))
        if epoch < self.epoch_seen:  # a leader that lost the lead and has not noticed
            reason = f"from leader epoch {epoch}; this node has seen epoch {self.epoch_seen}"
            return ErrorReply(code="stale_epoch", reason=reason)
        self.epoch_seen = epoch
        return message

    def _unrunnable(self, data: bytes) -> OfferReply | None:
        """For an authentic offer to this node whose spec this node's JobSpec refuses:
        a refusal for good, since every node applies the same rules (a requester older
        than its nodes may let such a spec through). None for any other fault."""
        key = self.key()
        if key is None:
            return None
        try:
            body = codec.unpack(auth.open_sealed(data, key))
            if not isinstance(body, dict) or body.get("node_id") != self.node_id:
                return None
            JobSpec.model_validate(body.get("spec"))
            return None  # the spec is fine: something else is wrong with the offer
        except (auth.AuthError, codec.CodecError):
            return None
        except ValidationError as exc:
            reason = f"invalid job spec: {codec.describe_validation_error(exc)}"
        try:
            return OfferReply(
                exec_id=body.get("exec_id"), accepted=False, permanent=True, reason=reason[:1024]
            )
        except ValidationError:
            return None  # no usable execution id to answer for


def exec_fields(node_id: str, job_id: str | None, exec_id: str) -> dict[str, str | None]:
    """The fields a log line about one execution carries (JSON keys)."""
    return {"node_id": node_id, "job_id": job_id, "exec_id": exec_id}


async def _respond(msg: Msg, message: Any) -> None:
    if not msg.reply:
        return  # published, not requested: nobody to answer
    try:
        await msg.respond(codec.encode(message))
    except Exception as exc:
        log.debug("cannot reply on %s: %s", msg.subject, exc)
