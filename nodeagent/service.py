"""The node agent's lifecycle: start, join the cluster, report periodically, leave.

Shaped like uvicorn's `Server.serve()` and arq's worker: `start()` connects and joins,
`run_forever()` runs one named loop per periodic report in a TaskGroup until the stop
event is set, `close()` says goodbye (a `Leave`, so the requester marks the node
UNKNOWN at once instead of waiting out `disconnected_after`) and drains. Nothing a peer
sends and no transient NATS trouble ends the daemon: every loop iteration catches,
logs and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

from nats.aio.client import Client
from nats.errors import Error as NatsError

from hivectl.core import auth, bus, codec
from hivectl.core.config import NodeAgentConfig
from hivectl.core.daemon import (
    Backoff,
    Status,
    install_signal_handlers,
    sd_notify,
    settle_memory,
    until_stopped,
    wait_event,
)
from hivectl.core.metrics import MetricsServer
from hivectl.core.models import (
    Heartbeat,
    Leave,
    Message,
    NodeInfo,
    ResourceUpdate,
    build_models,
)
from hivectl.core.subjects import Subjects
from nodeagent.capacity import Ledger
from nodeagent.executions import Executions
from nodeagent.fencing import Fence
from nodeagent.membership import Membership, Reports
from nodeagent.metrics import serve_metrics
from nodeagent.protocol import AUTH_HINT, LocalNode, Unreachable, sealed
from nodeagent.resources import collect_info, collect_resources

log = logging.getLogger("hive.nodeagent")

REQUEST_TIMEOUT = 5.0
FLUSH_TIMEOUT = 2  # seconds; nats-py wants an int
MIN_INTERVAL = 0.05  # a zero interval in a config must not become a busy loop
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
# Transient trouble or bad input from a peer: logged without a traceback (not our bug).
_EXPECTED = (NatsError, OSError, Unreachable, codec.CodecError, auth.AuthError)


class NodeAgent:
    """One compute node's daemon: join, then info, resources and heartbeats; leave on close.

    `membership` (set by `start()`) holds the join state and its counters; the plain-int
    counters here say what was published, for tests now and Prometheus later.
    """

    def __init__(self, cfg: NodeAgentConfig, *, request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.cfg = cfg
        self.subjects = Subjects(cfg.nats.prefix)
        self.request_timeout = request_timeout
        self.status = Status.INIT
        self.stop_event = asyncio.Event()
        self.node_id = cfg.name or ""  # final once start() has read the identity
        self.nc: Client | None = None
        self.membership: Membership | None = None
        self.local: LocalNode | None = None
        self.ledger: Ledger | None = None
        self.executions: Executions | None = None
        self.metrics_port: int | None = None
        self._metrics: MetricsServer | None = None
        self._info: NodeInfo | None = None
        self.fence = Fence(lambda reason, before: 0)  # the real one once executions exist
        self._first_delay = 0.0
        self._unreachable_logged = False
        self._loops_done = asyncio.Event()
        self._loops_done.set()
        # One counter for every sealed publish: the requester drops seq <= last seen, so
        # starting from the clock keeps a restarted agent ahead of its previous run.
        self._seq = time.time_ns() // 1000
        interval = max(cfg.info_update_interval, MIN_INTERVAL)
        self._backoff = Backoff(min(BACKOFF_FIRST, interval), min(BACKOFF_CAP, interval))
        self._started_at = time.monotonic()
        self.heartbeats_sent = 0
        self.resource_updates_sent = 0
        self.leaves_sent = 0
        self.errors = 0

    @property
    def active(self) -> bool:
        """Known to the requester now: heartbeats and resource reports go out."""
        return self.membership is not None and self.membership.active

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_at

    def stop(self) -> None:
        """Ask the agent to shut down; `run_forever()` returns soon after."""
        self.stop_event.set()

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Load the identity, connect, and try once to join. Idempotent.

        A requester that is not up yet is not an error: the info loop keeps trying. A
        stop while starting (NATS unreachable, say) cuts the start short: the status
        stays STARTING and `close()` tidies up.
        """
        if self.status is not Status.INIT:
            return
        self.status = Status.STARTING
        build_models()  # before any thread (info collection, Docker) can race to
        try:
            started = await until_stopped(self.stop_event, self._start())
        except BaseException:
            self.status = Status.FAILED
            raise
        if not started:
            return
        self.status = Status.RUNNING
        assert self.local is not None
        key = auth.fingerprint(self.local.identity.public_key)
        extra = {"node_id": self.node_id, "fingerprint": key}
        log.info("node agent %s started (key fingerprint %s)", self.node_id, key, extra=extra)
        settle_memory()
        # Harmless under Type=simple (systemd ignores it there); right under Type=notify.
        sd_notify(f"READY=1\nSTATUS=node {self.node_id} started")

    async def _start(self) -> None:
        self.local = local = await asyncio.to_thread(LocalNode.load, self.cfg)
        self.node_id = local.node_id
        self._info = await self._collect_info()
        info = self._info
        self.ledger = await asyncio.to_thread(
            Ledger.load, self.cfg.state_dir, info.allocatable, info.max_executions
        )
        self.executions = executions = Executions(
            self.cfg, self.node_id, self.ledger, self._message_key, self._next_seq
        )
        executions.unavailable = self._info.unavailable
        self.fence = Fence(executions.fence)
        reports = Reports(executions.held, self._next_seq, executions.stop_stale)
        self.membership = Membership(self.cfg, local, self._announce, self.request_timeout, reports)
        if self.cfg.metrics.enabled:
            self._metrics = await asyncio.to_thread(serve_metrics, self, self.cfg.metrics)
            self.metrics_port = self._metrics.port
        name = f"hive-nodeagent:{self.node_id}"
        self.nc = await bus.connect_daemon(self.cfg.nats, name=name, auth_hint=AUTH_HINT)
        await self.executions.start(self.nc)
        self._first_delay = await self._membership_step()

    async def run_forever(self) -> None:
        """Run the periodic loops until the stop event is set."""
        await self.start()
        if self.status is not Status.RUNNING:  # stopped while still starting
            return
        self._loops_done.clear()
        try:
            async with asyncio.TaskGroup() as tg:
                loops = [
                    tg.create_task(self._info_loop(), name=f"{self.node_id}:info"),
                    tg.create_task(self._resource_loop(), name=f"{self.node_id}:resources"),
                    tg.create_task(self._heartbeat_loop(), name=f"{self.node_id}:heartbeat"),
                    tg.create_task(self._fence_loop(), name=f"{self.node_id}:fence"),
                ]
                await self.stop_event.wait()
                # Cut an in-flight request short: everything the loops send is idempotent.
                for task in loops:
                    task.cancel()
        finally:
            self._loops_done.set()

    async def serve(self) -> None:
        """Start, run until stopped, close: the whole life of the daemon.

        Closed whatever happened, a failed start included: what it had opened (the
        connection, the metrics server) is closed too.
        """
        try:
            await self.run_forever()
        finally:
            await self.close()

    async def close(self) -> None:
        """Publish a Leave, flush and drain. Safe to call twice."""
        if self.status in (Status.CLOSING, Status.CLOSED):
            return
        failed = self.status is Status.FAILED
        self.status = Status.CLOSING
        self.stop_event.set()
        sd_notify(f"STOPPING=1\nSTATUS=stopping; jobs get {self.cfg.job_grace_period:g}s")
        log.info("node agent %s shutting down", self.node_id, extra={"node_id": self.node_id})
        await wait_event(self._loops_done, self.request_timeout)
        if self.nc is not None and self.executions is not None:
            await self._guarded("closing executions", self._close_executions)
        if self.nc is not None:
            if self.active:
                await self._guarded("leave", self._send_leave)
            await bus.close_gently(self.nc, FLUSH_TIMEOUT)
            self.nc = None
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.close)
            self._metrics = None
        self.status = Status.FAILED if failed else Status.CLOSED

    async def __aenter__(self) -> NodeAgent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- loops -----------------------------------------------------------------------
    async def _info_loop(self) -> None:
        """Info updates double as the "am I still known?" check, and drive (re)joining."""
        delay = self._first_delay
        while await self._wait(delay):
            delay = await self._membership_step()

    async def _resource_loop(self) -> None:
        while await self._wait(self.cfg.resource_update_interval):
            if self.active:
                await self._guarded("resource update", self._send_resources)

    async def _heartbeat_loop(self) -> None:
        while await self._wait(self.cfg.heartbeat_interval):
            if self.active:
                await self._guarded("heartbeat", self._send_heartbeat)

    async def _fence_loop(self) -> None:
        while await self._wait(self.fence.check_every):
            self.fence.check()

    async def _wait(self, seconds: float) -> bool:
        """Wait `seconds` or until stopped; True while the agent should keep going."""
        return not await wait_event(self.stop_event, max(seconds, MIN_INTERVAL))

    async def _membership_step(self) -> float:
        """Refresh the info, then one join or info exchange; the delay before the next."""
        assert self.nc is not None and self.membership is not None and self.local is not None
        try:
            self._info = await self._collect_info()
            if self.executions is not None:
                self.executions.unavailable = self._info.unavailable
            sent = time.monotonic()
            delay = await self.membership.step(self.nc, self._info)
            if self.membership.active:  # the requester answered: contact, and its terms
                self.fence.lost_after = self.membership.lost_after
                self.fence.contact(sent)
            if self.ledger is not None:
                self.ledger.allocatable = self._info.allocatable
                self.ledger.max_executions = self._info.max_executions
            await self._sync_executions()
        except Unreachable as exc:
            # Expected while the requester is down or restarting: say so once.
            level = logging.DEBUG if self._unreachable_logged else logging.WARNING
            log.log(level, "%s; retrying", exc, extra={"node_id": self.node_id})
            self._unreachable_logged = True
            return self._backoff.next()
        except Exception as exc:
            self._failed("membership", exc)
            return self._backoff.next()
        self._unreachable_logged = False
        self._backoff.reset()
        return delay

    async def _guarded(self, what: str, action: Callable[[], Awaitable[None]]) -> None:
        """Run one iteration's work; log a failure and carry on, whatever it was."""
        try:
            await action()
        except Exception as exc:
            self._failed(what, exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        log.warning(
            "%s of node %s failed: %s",
            what,
            self.node_id,
            exc or type(exc).__name__,
            exc_info=not isinstance(exc, _EXPECTED),  # a traceback only for the unexpected
            extra={"node_id": self.node_id},
        )

    async def _collect_info(self) -> NodeInfo:
        """This node's info, gathered off the loop; says when an executor comes or goes."""
        assert self.local is not None
        info = await asyncio.to_thread(collect_info, self.cfg, self.local.benchmark)
        before = self._info.unavailable if self._info is not None else {}
        for engine, why in info.unavailable.items():
            if before.get(engine) != why:
                log.warning(
                    "%s executor unavailable: %s; not offered to the requester until it works",
                    engine,
                    why,
                    extra={"node_id": self.node_id},
                )
        for engine in before.keys() - info.unavailable.keys():
            log.info("%s executor available again", engine, extra={"node_id": self.node_id})
        return info

    # -- sending ---------------------------------------------------------------------
    async def _announce(self) -> None:
        """Report at once on (re)joining, not up to an interval later."""
        if self.executions is not None and self.nc is not None:
            # Take offers before the first heartbeat makes the node schedulable.
            await self._guarded("offer subscription", self._sync_executions)
        await self._guarded("heartbeat", self._send_heartbeat)
        await self._guarded("resource update", self._send_resources)

    async def _send_heartbeat(self) -> None:
        assert self.nc is not None
        message = Heartbeat(node_id=self.node_id, seq=self._next_seq())
        sent = time.monotonic()
        await self._publish(self.subjects.node_heartbeat(self.node_id), message)
        self.heartbeats_sent += 1
        try:
            await self.nc.flush(timeout=FLUSH_TIMEOUT)  # the server has it: contact proved
        except (NatsError, TimeoutError):
            return  # cut off: the fence loop counts the silence (said once it acts)
        self.fence.contact(sent)

    async def _send_resources(self) -> None:
        assert self._info is not None
        locked = self.ledger.locked if self.ledger is not None else None
        report = await asyncio.to_thread(
            collect_resources, self._info, self.cfg.resolved_work_dir, locked
        )
        message = ResourceUpdate(node_id=self.node_id, seq=self._next_seq(), resources=report)
        await self._publish(self.subjects.node_resources(self.node_id), message)
        self.resource_updates_sent += 1

    async def _send_leave(self) -> None:
        message = Leave(node_id=self.node_id, seq=self._next_seq(), reason="shutdown")
        await self._publish(self.subjects.node_leave(self.node_id), message)
        self.leaves_sent += 1

    async def _publish(self, subject: str, message: Message) -> None:
        assert self.nc is not None and self.membership is not None
        assert self.membership.key is not None
        await self.nc.publish(subject, sealed(message, self.membership.key))

    async def _sync_executions(self) -> None:
        if self.executions is not None and self.nc is not None:
            await self.executions.sync(self.nc, self.active)

    async def _close_executions(self) -> None:
        assert self.executions is not None
        await self.executions.close(self.cfg.job_grace_period)

    def _message_key(self) -> bytes | None:
        return self.membership.key if self.membership is not None else None

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq


async def main(cfg: NodeAgentConfig) -> int:
    """The daemon: run until SIGTERM/SIGINT (a second one exits at once); the exit code."""
    agent = NodeAgent(cfg)
    install_signal_handlers(agent.stop_event, "nodeagent")
    code = 0
    try:
        await agent.serve()
    except Exception as exc:
        # A state dir it cannot write is the operator's to fix: no traceback for that.
        log.error("node agent failed: %s", exc, exc_info=not isinstance(exc, OSError))
        code = 1
    log.info(
        "node agent %s stopped after %.1fs",
        agent.node_id or "?",
        agent.uptime,
        extra={"node_id": agent.node_id or None},
    )
    return code
