"""Requests from the requester to compute nodes: offers and cancels, sealed per node.

Each request is sealed with the key the node shares with the requester, and every way a
node can fail to answer (no record, nobody listening, a timeout, an unreadable or error
reply) comes back as an Answer with a reason instead of an exception, so a placement
can treat a silent node like one that declined.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import Histogram

from hivectl.core import auth, codec
from hivectl.core.jobs import Cancel, Execution, JobSpec, Offer, OfferReply, Withdraw
from hivectl.core.models import ErrorReply, Message, OkReply
from hivectl.core.subjects import Subjects
from requester.nodes.registry import Registry

log = logging.getLogger("hive.requester.nodelink")
# Seconds; from a local offer round trip to a queue of nodes declining in turn.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True, slots=True)
class Answer:
    exec_id: str
    accepted: bool
    reason: str = ""
    unanswered: bool = False  # timed out: the node may still have taken it
    permanent: bool = False  # no node will run the spec (see OfferReply)


class NodeLink:
    """Requests to compute nodes, sealed with the key the node shares with the requester."""

    def __init__(self, nc: Client, subjects: Subjects, registry: Registry, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._registry = registry
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self.offers = 0
        self.cancels = 0
        self.epoch = 0  # the leader's, sent with every offer and cancel (see leadership)
        # Not leading: the leader's as last heard, for the cancels of a stop served here
        # (a node refuses one from an epoch older than it has seen).
        self.leader_epoch: Callable[[], int] = lambda: 0
        # Not in the global registry: each requester's metrics endpoint registers its own.
        self.offer_seconds = Histogram(
            "hive_offer_seconds",
            "Offer round trips to compute nodes (answered or not).",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )

    async def offer(self, execution: Execution, spec: JobSpec, epoch: int | None = None) -> Answer:
        """Offer the execution to its node, with `epoch` (a follower placing a job sends
        the leader's) or else this requester's own."""
        node, exec_id = execution.node_id, execution.exec_id
        offer = Offer(
            node_id=node,
            exec_id=exec_id,
            job_id=execution.job_id,
            attempt=execution.attempt,
            spec=spec,
            epoch=self.epoch if epoch is None else epoch,
        )
        self.offers += 1
        started = time.perf_counter()
        answer, unanswered = await self._request(node, "offer", offer, OfferReply)
        self.offer_seconds.observe(time.perf_counter() - started)
        if isinstance(answer, str):
            return Answer(exec_id, False, answer, unanswered)
        assert isinstance(answer, OfferReply)
        if answer.exec_id != exec_id:
            return Answer(exec_id, False, "the node answered for another execution")
        permanent = answer.permanent and not answer.accepted
        return Answer(exec_id, answer.accepted, answer.reason, permanent=permanent)

    async def withdraw(self, execution: Execution, epoch: int | None = None) -> Answer:
        """Take back an offer whose answer was lost: the node says whether it took it.
        Unanswered again, the execution's fate stays unknown (ask once more later)."""
        node, exec_id = execution.node_id, execution.exec_id
        epoch = self.epoch if epoch is None else epoch
        message = Withdraw(node_id=node, exec_id=exec_id, epoch=epoch)
        answer, _ = await self._request(node, "withdraw", message, OfferReply)
        if isinstance(answer, str):
            # Only the node's own word settles it: an agent not listening now (re-joining,
            # say) may still run the execution.
            return Answer(exec_id, False, answer, unanswered=True)
        assert isinstance(answer, OfferReply)
        return Answer(exec_id, answer.accepted, answer.reason)

    def cancel(self, executions: list[Execution], reason: str) -> None:
        """Tell each execution's node to stop it, in the background; failures are logged."""
        for execution in executions:
            task = asyncio.create_task(self._cancel(execution, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _cancel(self, execution: Execution, reason: str) -> None:
        node = execution.node_id
        epoch = self.epoch or self.leader_epoch()
        message = Cancel(node_id=node, exec_id=execution.exec_id, reason=reason[:1024], epoch=epoch)
        self.cancels += 1
        answer, _ = await self._request(node, "cancel", message, OkReply)
        if isinstance(answer, str):
            log.info("cancel of %s on %s not confirmed: %s", execution.exec_id, node, answer)

    async def _request(
        self, node: str, verb: str, message: Message, expect: type[Message]
    ) -> tuple[Message | str, bool]:
        """The node's reply, or a reason it gave none (and whether it timed out)."""
        key = self._registry.message_key(node)
        if key is None:
            return f"node {node} has no record", False
        subject = self._subjects.compute(node, verb)
        try:
            reply = await self._nc.request(
                subject, auth.seal(codec.encode(message), key), timeout=self._timeout
            )
            answer: Message = codec.decode(reply.data, (expect, ErrorReply))
        except NoRespondersError:
            return "no agent is listening", False
        except (NatsTimeoutError, TimeoutError):
            return f"no answer within {self._timeout:g}s", True
        except codec.CodecError as exc:
            return f"unreadable reply: {exc.reason}", False
        if isinstance(answer, ErrorReply):
            return f"{answer.code}: {answer.reason}", False
        return answer, False

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._timeout + 1)
