"""Node and job events: published on `hive.events.*` and kept in the HIVE_EVENTS stream."""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from hivectl.core import codec
from hivectl.core.models import NodeEvent
from hivectl.core.subjects import Subjects
from requester.provision import ensure_stream
from requester.store import Store

log = logging.getLogger("hive.requester.events")

EVENTS_MAX_AGE = 7 * 24 * 3600.0


class Events:
    """Publishes events; the stream captures them, so a plain publish is enough."""

    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects

    async def setup(self, js: Store) -> None:
        await ensure_stream(
            js,
            StreamConfig(
                name=self._subjects.events_stream,
                subjects=[self._subjects.node_events(), self._subjects.job_events()],
                max_age=EVENTS_MAX_AGE,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
            ),
        )

    async def node(self, event: NodeEvent) -> None:
        log.info(
            "node %s %s: %s -> %s",
            event.node_id,
            event.event,
            event.old or "-",
            event.new or "-",
            extra={"node_id": event.node_id},
        )
        await self._nc.publish(self._subjects.node_events(event.node_id), codec.encode(event))
