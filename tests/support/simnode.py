"""A simulated compute node speaking the real wire protocol (signed registration, sealed
messages). Tests use it to play a well-behaved node, and a hostile one.
"""

from __future__ import annotations

import time

from nats.aio.client import Client

from hivectl.core import auth, codec
from hivectl.core.models import (
    ErrorReply,
    Heartbeat,
    InfoReply,
    InfoUpdate,
    Leave,
    Message,
    NodeInfo,
    NodeResources,
    RegisterReply,
    RegisterRequest,
    Resources,
    ResourceUpdate,
)
from hivectl.core.subjects import Subjects


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
