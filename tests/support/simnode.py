"""A simulated compute node speaking the real wire protocol (signed registration, sealed
messages). Tests use it to play a well-behaved node, and a hostile one.
"""

from __future__ import annotations

import time

from nats.aio.client import Client

from hivectl.core import auth, codec
from hivectl.core.models import (
    Approval,
    ErrorReply,
    Heartbeat,
    InfoReply,
    InfoUpdate,
    Leave,
    Message,
    NodeEvent,
    NodeInfo,
    NodeRecord,
    NodeResources,
    RegisterReply,
    RegisterRequest,
    Resources,
    ResourceUpdate,
)
from hivectl.core.subjects import Subjects
from requester.nodes.liveness import Liveness


def sample_info(labels: dict[str, str] | None = None) -> NodeInfo:
    total = Resources(cpu=4.0, memory=8 * 2**30, disk=100 * 2**30, gpu=0)
    return NodeInfo(
        hostname="sim",
        arch="x86_64",
        os="linux",
        version="0.1.0",
        labels=labels or {},
        executors=["docker"],
        total=total,
        allocatable=total,
    )


async def _no_events(event: NodeEvent) -> None:
    return None


def healthy_nodes(
    count: int, total: Resources, *, width: int = 0, healthy_for: float = 30.0
) -> tuple[list[NodeRecord], Liveness]:
    """`count` APPROVED nodes offering `total` each, ids node-0 .. (zero-padded to
    `width`), all just heard from: HEALTHY for `healthy_for` seconds. What placement is
    tried on without NATS (unit tests, bench/placement.py)."""
    info = sample_info().model_copy(update={"total": total, "allocatable": total})
    key = auth.Identity.generate().public_key
    records = [
        NodeRecord(node_id=f"node-{i:0{width}d}", public_key=key, info=info,
                   approval=Approval.APPROVED)
        for i in range(count)
    ]  # fmt: skip
    liveness = Liveness(healthy_for, 2 * healthy_for, _no_events)
    for record in records:
        liveness.heard(record.node_id, time.monotonic())
    return records, liveness


class SimNode:
    def __init__(self, nc: Client, node_id: str, subjects: Subjects | None = None) -> None:
        self.nc = nc
        self.node_id = node_id
        self.subjects = subjects or Subjects()
        self.identity = auth.Identity.generate()
        self.key: bytes | None = None
        self.seq = time.time_ns() // 1000
        self.info = sample_info()
        self.token = ""  # an enrollment token, sent with the registration

    async def register(self, timeout: float = 5.0) -> RegisterReply | ErrorReply:
        request = RegisterRequest(
            node_id=self.node_id,
            public_key=self.identity.public_key,
            info=self.info,
            token=self.token,
        )
        frame = self.identity.sign(codec.encode(request))
        reply = await self.nc.request(self.subjects.node_register, frame, timeout=timeout)
        answer: Message = codec.decode(reply.data, (RegisterReply, ErrorReply))
        if isinstance(answer, RegisterReply):
            self.key = self.identity.message_key(answer.requester_key)
        assert isinstance(answer, RegisterReply | ErrorReply)
        return answer

    def sealed(self, message: Message) -> bytes:
        assert self.key is not None, "register first"
        return auth.seal(codec.encode(message), self.key)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def heartbeat(self) -> None:
        beat = Heartbeat(node_id=self.node_id, seq=self.next_seq())
        await self.nc.publish(self.subjects.node_heartbeat(self.node_id), self.sealed(beat))

    async def resources(self, available: Resources | None = None) -> None:
        total = self.info.total
        report = NodeResources(total=total, allocatable=total, available=available or total)
        update = ResourceUpdate(node_id=self.node_id, seq=self.next_seq(), resources=report)
        await self.nc.publish(self.subjects.node_resources(self.node_id), self.sealed(update))

    async def leave(self) -> None:
        leave = Leave(node_id=self.node_id, seq=self.next_seq(), reason="shutdown")
        await self.nc.publish(self.subjects.node_leave(self.node_id), self.sealed(leave))

    async def send_info(self, timeout: float = 5.0) -> InfoReply | ErrorReply:
        update = InfoUpdate(node_id=self.node_id, info=self.info)
        reply = await self.nc.request(
            self.subjects.node_info(self.node_id), self.sealed(update), timeout=timeout
        )
        answer: Message = codec.decode(reply.data, (InfoReply, ErrorReply))
        assert isinstance(answer, InfoReply | ErrorReply)
        return answer
