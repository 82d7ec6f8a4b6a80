"""The node side of the wire protocol: register, info, and the sealed messages.

Registration is the one signed message (the requester learns the node's key from it);
everything after it is sealed with the MAC key both sides derive from their key pairs.
These functions do one exchange each and leave retrying and state to their callers
(the daemon's loops, or `hive-nodeagent register`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from hivectl.core import auth, bus, codec
from hivectl.core.auth import Identity
from hivectl.core.config import NodeAgentConfig
from hivectl.core.models import (
    ErrorReply,
    InfoReply,
    InfoUpdate,
    Message,
    NodeInfo,
    RegisterReply,
    RegisterRequest,
)
from hivectl.core.subjects import Subjects
from nodeagent.identity import Sentinel, load_identity, resolve_node_id, write_sentinel
from nodeagent.resources import collect_info, load_or_measure_benchmark

# What a node gives when the server refuses its NATS credentials; logged with the refusal.
AUTH_HINT = (
    "give the agent the compute role's credentials: hive-nodeagent run --credentials PATH "
    "(or [nats] credentials_file), a copy of compute.toml from the requester's credentials "
    "dir, which the requester logs at start (as root: /var/lib/hive-requester/credentials/)"
)
# The requester's answer when a MAC does not check out under the key it holds for us:
# its own key changed (a new data dir), so the key we derived is stale; re-register.
UNAUTHENTICATED = "unauthenticated"
R = TypeVar("R", bound=Message)


class Unreachable(RuntimeError):
    """Nobody answered: no requester is subscribed, or none replied in time."""


class RegistrationError(RuntimeError):
    """`hive-nodeagent register` failed; the message is one line for the operator."""


@dataclass(frozen=True)
class LocalNode:
    """What the agent knows about itself before talking to anyone."""

    identity: Identity
    node_id: str
    benchmark: float

    @classmethod
    def load(cls, cfg: NodeAgentConfig) -> LocalNode:
        """Identity (created on first start), node id and benchmark score (measured once)."""
        identity = load_identity(cfg.state_dir)
        node_id = resolve_node_id(cfg.name, identity.public_key)
        return cls(identity, node_id, load_or_measure_benchmark(cfg.state_dir))


def enrollment_token(cfg: NodeAgentConfig) -> str:
    """The token the node registers with ('' for none)."""
    return cfg.token.get_secret_value().strip() if cfg.token is not None else ""


def sentinel_for(reply: RegisterReply, subjects: Subjects) -> Sentinel:
    return Sentinel.now(reply.cluster, reply.node_id, reply.requester_key, subjects.prefix)


def sealed(message: Message, key: bytes) -> bytes:
    """`message` encoded and sealed under the node's message key."""
    return auth.seal(codec.encode(message), key)


async def register(
    nc: Client,
    subjects: Subjects,
    identity: Identity,
    node_id: str,
    info: NodeInfo,
    timeout: float,
    token: str = "",
) -> RegisterReply | ErrorReply:
    """One signed registration request (with the enrollment `token`, if any); raises
    Unreachable, or CodecError on a bad reply."""
    request = RegisterRequest(
        node_id=node_id, public_key=identity.public_key, info=info, token=token
    )
    data = identity.sign(codec.encode(request))
    reply = await _request(nc, subjects.node_register, data, timeout)
    return _narrow(codec.decode(reply, (RegisterReply, ErrorReply)), RegisterReply)


async def info(
    nc: Client,
    subjects: Subjects,
    node_id: str,
    node_info: NodeInfo,
    key: bytes,
    timeout: float,
    executions: list[str] | None = None,
    seq: int = 0,
) -> InfoReply | ErrorReply:
    """One sealed info update; the reply says whether the requester still knows this node
    (and, given the executions the node holds, which of them to stop)."""
    update = InfoUpdate(node_id=node_id, info=node_info, executions=executions, seq=seq)
    data = sealed(update, key)
    reply = await _request(nc, subjects.node_info(node_id), data, timeout)
    return _narrow(codec.decode(reply, (InfoReply, ErrorReply)), InfoReply)


def _narrow(answer: Message, expect: type[R]) -> R | ErrorReply:
    # codec.decode already refused every other kind; this only tells mypy so.
    if isinstance(answer, expect | ErrorReply):
        return answer
    raise codec.CodecError("unknown_kind", f"kind {answer.kind} is not accepted here")


async def _request(nc: Client, subject: str, data: bytes, timeout: float) -> bytes:
    # bus.request encodes a model itself, so signed and sealed frames come here instead.
    try:
        msg = await nc.request(subject, data, timeout=timeout)
    except NoRespondersError:
        raise Unreachable(f"no requester is answering on {subject}") from None
    except (NatsTimeoutError, TimeoutError):
        raise Unreachable(f"no answer on {subject} within {timeout:g}s") from None
    payload: bytes = msg.data
    return payload


async def register_node(cfg: NodeAgentConfig, timeout: float) -> RegisterReply:
    """Register this node once and write the sentinel (`hive-nodeagent register`).

    Raises RegistrationError (NATS unreachable, no requester, refused) with one line.
    """
    local = LocalNode.load(cfg)
    node_info = collect_info(cfg, local.benchmark)
    subjects = Subjects(cfg.nats.prefix)
    try:
        nc = await bus.connect_cli(cfg.nats, name=f"hive-nodeagent-register:{local.node_id}")
    except bus.BusError as exc:
        hint = f"; {AUTH_HINT}" if "authorization" in str(exc) else ""
        raise RegistrationError(f"{exc}{hint}") from None
    try:
        reply = await register(
            nc, subjects, local.identity, local.node_id, node_info, timeout, enrollment_token(cfg)
        )
    except (Unreachable, codec.CodecError) as exc:
        raise RegistrationError(str(exc)) from None
    finally:
        await nc.close()
    if isinstance(reply, ErrorReply):
        raise RegistrationError(
            f"registration of {local.node_id} refused ({reply.code}): {reply.reason}"
        )
    write_sentinel(cfg.state_dir, sentinel_for(reply, subjects))
    return reply
