"""`hive.api.event.list`: the HIVE_EVENTS stream, read by the requester for callers with
no JetStream access of their own (users), a page at a time.

A page is one short-lived pull consumer on the stream (filtered to the node's or job's
subject, from a sequence or a time): created, fetched from once, deleted; its
deliveries come to the requester's own inbox prefix, where no user or node listens. A
viewer reads every event; a submitter only those of its own jobs.
"""

from __future__ import annotations

import contextlib
import logging

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hivectl.core import codec
from hivectl.core.joboutput import EventListReply, EventListRequest, encode_data
from hivectl.core.models import Message
from hivectl.core.subjects import Subjects
from hivectl.core.users import Role, article
from requester.jobs.records import JobStore
from requester.routing import REPLY_HEADROOM, ApiRouter, Refusal, current_role, current_user
from requester.store import Store

log = logging.getLogger("hive.requester.events")
EMPTY_WAIT = 0.2  # seconds a page with nothing new waits for a first event
CONSUMER_IDLE = 10.0  # a page's consumer the requester could not delete goes by itself


class EventApi(ApiRouter):
    noun = "event"

    def __init__(
        self, js: Store, subjects: Subjects, jobs: JobStore, *, max_payload: int,
        limits: codec.Limits,
    ) -> None:  # fmt: skip
        super().__init__()
        self._js = js
        self._subjects = subjects
        self._jobs = jobs
        self._max_reply = max_payload - REPLY_HEADROOM
        self._limits = limits
        self.handlers.update(list=self.list_events)
        self.roles.update(list=Role.VIEWER)  # and a submitter only its own jobs'

    def _subject(self, request: EventListRequest) -> str:
        s = self._subjects
        role = current_role()
        if not role.reads_all_jobs:
            job = self._jobs.record(request.job) if request.job else None
            if job is None or job.owner != current_user():
                raise Refusal(
                    "forbidden",
                    f"{current_user()} is {article(role)}: it reads the events of its own "
                    "jobs only (--job ID)",
                )
        if request.node:
            return s.node_events(request.node)
        return s.job_events(request.job) if request.job else s.all_events

    async def list_events(self, data: bytes) -> Message:
        request = codec.decode(data, EventListRequest, self._limits)
        subject = self._subject(request)
        stream = self._subjects.events_stream
        config = ConsumerConfig(
            filter_subject=subject,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=CONSUMER_IDLE,
            mem_storage=True,
            num_replicas=1,
        )
        if request.after or not request.since:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = request.after + 1
        else:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = request.since
        try:
            info = await self._js.retried(stream, lambda: self._js.add_consumer(stream, config))
        except NotFoundError:
            return EventListReply(after=request.after)  # no stream: nothing ever happened
        reply = EventListReply(after=request.after)
        sub = await self._js.pull_subscribe_bind(consumer=info.name, stream=stream)
        try:
            try:
                msgs = await sub.fetch(request.limit, timeout=EMPTY_WAIT)
            except (NatsTimeoutError, TimeoutError):
                msgs = []
            size = 0
            for msg in msgs:
                size += len(msg.data) * 4 // 3 + 8
                if size > self._max_reply:
                    reply.more = True
                    break
                reply.events.append(encode_data(msg.data))
                reply.after = msg.metadata.sequence.stream
            reply.more = reply.more or len(msgs) == request.limit
        finally:
            await sub.unsubscribe()
            with contextlib.suppress(Exception):  # it goes by itself when idle
                await self._js.delete_consumer(stream, info.name)
        return reply
