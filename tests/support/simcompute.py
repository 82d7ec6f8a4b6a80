"""A simulated compute node: SimNode plus the job side of the wire protocol.

It answers sealed offers, cancels and withdrawals on `hive.compute.<id>.{offer,cancel,
withdraw}` (refusing
any whose MAC does not check out under its own key), decides by a policy, and reports
execution states into HIVE_EXEC as a real agent must: sealed, with a Nats-Msg-Id so a
resend is stored once. Lean on purpose: bench/jobs.py runs a thousand of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from hivectl.core import auth, codec
from hivectl.core.jobs import (
    Cancel,
    ExecState,
    ExecUpdate,
    Measured,
    Offer,
    OfferReply,
    Withdraw,
)
from hivectl.core.models import ErrorReply, Message, OkReply
from hivectl.core.subjects import Subjects
from tests.support.simnode import SimNode

M = TypeVar("M", bound=Message)
# An offer's answer: (accepted, reason).
Policy = Callable[[Offer], tuple[bool, str]]
OnAccept = Callable[["SimCompute", Offer], Awaitable[None]]


def accept_all(offer: Offer) -> tuple[bool, str]:
    return True, ""


def reject_all(offer: Offer) -> tuple[bool, str]:
    return False, "node is full"


class SimCompute(SimNode):
    def __init__(
        self,
        nc: Client,
        node_id: str,
        subjects: Subjects | None = None,
        *,
        policy: Policy = accept_all,
        on_accept: OnAccept | None = None,
    ) -> None:
        super().__init__(nc, node_id, subjects)
        self.policy = policy
        self.on_accept = on_accept
        self.for_good = False  # its refusals say no node will run the spec (OfferReply)
        self.offers: list[Offer] = []
        self.accepted: list[Offer] = []
        self.cancels: list[Cancel] = []
        self.withdrawals: list[Withdraw] = []
        self.forged = 0  # requests whose MAC did not check out
        self._subs: list[Subscription] = []
        self._update_seq = 0

    async def serve(self) -> None:
        """Answer offers and cancels (register first: the key comes from the reply)."""
        s = self.subjects
        self._subs = [
            await self.nc.subscribe(s.compute(self.node_id, "offer"), cb=self._on_offer),
            await self.nc.subscribe(s.compute(self.node_id, "cancel"), cb=self._on_cancel),
            await self.nc.subscribe(s.compute(self.node_id, "withdraw"), cb=self._on_withdraw),
        ]
        await self.nc.flush()

    async def stop_serving(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs = []

    async def _on_offer(self, msg: Msg) -> None:
        offer = self._open(msg, Offer)
        if offer is None:
            await self._answer(msg, ErrorReply(code="unauthenticated", reason="bad MAC"))
            return
        self.offers.append(offer)
        accepted, reason = self.policy(offer)
        permanent = self.for_good and not accepted
        reply = OfferReply(
            exec_id=offer.exec_id, accepted=accepted, reason=reason, permanent=permanent
        )
        await self._answer(msg, reply)
        if accepted:
            self.accepted.append(offer)
            if self.on_accept is not None:
                await self.on_accept(self, offer)

    async def _on_cancel(self, msg: Msg) -> None:
        cancel = self._open(msg, Cancel)
        if cancel is None:
            await self._answer(msg, ErrorReply(code="unauthenticated", reason="bad MAC"))
            return
        self.cancels.append(cancel)
        await self._answer(msg, OkReply(id=cancel.exec_id))

    async def _on_withdraw(self, msg: Msg) -> None:
        """Taken if it accepted the offer, as an agent answers; else never to be taken."""
        withdraw = self._open(msg, Withdraw)
        if withdraw is None:
            await self._answer(msg, ErrorReply(code="unauthenticated", reason="bad MAC"))
            return
        self.withdrawals.append(withdraw)
        taken = any(o.exec_id == withdraw.exec_id for o in self.accepted)
        reason = "" if taken else "withdrawn before this node took it"
        await self._answer(msg, OfferReply(exec_id=withdraw.exec_id, accepted=taken, reason=reason))

    def _open(self, msg: Msg, expect: type[M]) -> M | None:
        """A request from the requester: sealed with the key this node shares with it."""
        assert self.key is not None, "register first"
        try:
            message = codec.decode(auth.open_sealed(msg.data, self.key), expect)
        except (auth.AuthError, codec.CodecError):
            self.forged += 1
            return None
        if getattr(message, "node_id", None) != self.node_id:
            self.forged += 1
            return None
        return message

    async def _answer(self, msg: Msg, message: Message) -> None:
        if msg.reply:
            await msg.respond(codec.encode(message))

    async def update(
        self,
        exec_id: str,
        job_id: str,
        state: ExecState,
        *,
        exit_code: int | None = None,
        error: str = "",
        seq: int | None = None,
        measured: Measured | None = None,
    ) -> None:
        """Report an execution state into HIVE_EXEC, as the node agent does."""
        if seq is None:
            self._update_seq += 1
            seq = self._update_seq
        message = ExecUpdate(
            node_id=self.node_id,
            seq=seq,
            exec_id=exec_id,
            job_id=job_id,
            state=state,
            exit_code=exit_code,
            error=error,
            measured=measured,
        )
        await self.nc.jetstream().publish(
            self.subjects.node_exec(self.node_id),
            self.sealed(message),
            headers={"Nats-Msg-Id": f"{exec_id}-{state.value}-{seq}"},
        )
