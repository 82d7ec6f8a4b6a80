"""Node, job, token and user events: published on `hive.events.*` and kept in the HIVE_EVENTS
stream, each stamped with who caused it (see `routing.ACTOR`)."""

from __future__ import annotations

import logging
from typing import TypeVar

from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from hivectl.core import codec
from hivectl.core.jobs import JobEvent
from hivectl.core.models import NodeEvent
from hivectl.core.subjects import Subjects
from hivectl.core.tokens import TokenEvent
from hivectl.core.users import UserEvent
from requester.provision import ensure_stream
from requester.routing import current_actor
from requester.store import Store

log = logging.getLogger("hive.requester.events")

EVENTS_MAX_AGE = 7 * 24 * 3600.0
E = TypeVar("E", NodeEvent, JobEvent, TokenEvent, UserEvent)


def stamped(event: E) -> E:
    """`event` naming who caused it: the operator whose request is being handled, else
    the requester itself. An event that names someone already keeps them."""
    if event.actor:
        return event
    return event.model_copy(update={"actor": current_actor() or "requester"})


class Events:
    """Publishes events; the stream captures them, so a plain publish is enough."""

    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects

    async def setup(self, js: Store) -> None:
        # A stream made before token or user events existed gets their subjects added
        # (provision adds what is missing).
        subjects = self._subjects
        await ensure_stream(
            js,
            StreamConfig(
                name=subjects.events_stream,
                subjects=[
                    subjects.node_events(),
                    subjects.job_events(),
                    subjects.token_events(),
                    subjects.user_events(),
                ],
                max_age=EVENTS_MAX_AGE,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
            ),
        )

    async def node(self, event: NodeEvent) -> None:
        event = stamped(event)
        log.info(
            "node %s %s: %s -> %s (by %s)",
            event.node_id,
            event.event,
            event.old or "-",
            event.new or "-",
            event.actor,
            extra={"node_id": event.node_id, "reason": event.reason or None},
        )
        await self._nc.publish(self._subjects.node_events(event.node_id), codec.encode(event))

    async def token(self, event: TokenEvent) -> None:
        event = stamped(event)
        log.info("token %s %s (by %s)", event.token_id, event.event, event.actor)
        await self._nc.publish(self._subjects.token_events(event.token_id), codec.encode(event))

    async def user(self, event: UserEvent) -> None:
        event = stamped(event)
        log.info("user %s %s (by %s)", event.name, event.event, event.actor)
        await self._nc.publish(self._subjects.user_events(event.name), codec.encode(event))
