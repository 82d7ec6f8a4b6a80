"""Prometheus metrics for the requester, read from live state at scrape time.

A collector that reads the daemon's own counters costs nothing on the heartbeat path,
where incrementing a prometheus Counter (a lock per call) would. It runs on the HTTP
server's thread, so it only reads snapshots taken in one C-level copy (`list(d...)`),
never a dict the event loop may resize under it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hivectl.core.config import MetricsSettings
from hivectl.core.jobs import ExecState, JobState
from hivectl.core.metrics import MetricsServer, start_metrics
from hivectl.core.models import Approval, Health

if TYPE_CHECKING:
    from requester.service import Requester


class RequesterCollector(Collector):
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    def collect(self) -> Iterator[Metric]:
        yield from self._nodes()
        yield from self._messages()
        yield from self._api()
        yield from self._jobs()
        yield from self._leadership()

    def _leadership(self) -> Iterator[Metric]:
        req = self._requester
        lead = req.leadership
        leader = GaugeMetricFamily("hive_leader", "1 while this requester leads the cluster.")
        leader.add_metric([], 1 if lead is not None and lead.is_leader else 0)
        yield leader
        epoch = GaugeMetricFamily("hive_leader_epoch", "This requester's epoch while it leads.")
        epoch.add_metric([], lead.epoch if lead is not None else 0)
        yield epoch
        elections = CounterMetricFamily(
            "hive_leader_elections", "Times this requester became leader.", labels=["how"]
        )
        won = lead.elections if lead is not None else 0
        took = lead.takeovers if lead is not None else 0
        elections.add_metric(["vacant"], won - took)
        elections.add_metric(["takeover"], took)
        yield elections
        races = CounterMetricFamily(
            "hive_job_writes_lost_races",
            "Job record writes another writer beat (each re-read and applied again).",
        )
        races.add_metric([], req.jobs.lost_races if req.jobs is not None else 0)
        yield races
        yield from self._placers()

    def _placers(self) -> Iterator[Metric]:
        """Jobs placed by the followers that took them, and what the leader did of those."""
        req = self._requester
        took = CounterMetricFamily(
            "hive_follower_jobs",
            "Jobs this requester took to place as a follower, by outcome.",
            labels=["outcome"],
        )
        assist = req.assist
        took.add_metric(["placed"], assist.placed if assist else 0)
        took.add_metric(["handed_over"], assist.handed_over if assist else 0)
        yield took
        left = CounterMetricFamily(
            "hive_follower_jobs_left",
            "Jobs submitted to this follower that it left to the leader, by why.",
            labels=["why"],
        )
        for why, count in sorted(assist.left.items()) if assist else []:
            left.add_metric([why], count)
        yield left
        claims = req.duties.claims if req.duties is not None else None
        found = CounterMetricFamily(
            "hive_leader_followers_jobs",
            "Jobs the leader found taken by a follower: left to it, or taken over when it "
            "placed nothing in time.",
            labels=["what"],
        )
        found.add_metric(["left"], claims.left if claims else 0)
        found.add_metric(["taken_over"], claims.taken_over if claims else 0)
        yield found

    def _nodes(self) -> Iterator[Metric]:
        req = self._requester
        approval = GaugeMetricFamily(
            "hive_nodes", "Compute nodes by approval.", labels=["approval"]
        )
        records = req.registry.snapshot() if req.registry else []
        by_approval = Counter(r.approval for r in records)  # one pass: 50k records take ms
        for state in Approval:
            approval.add_metric([state.value], by_approval[state])
        yield approval
        health = GaugeMetricFamily(
            "hive_nodes_health", "Compute nodes by health status.", labels=["status"]
        )
        healthy = req.liveness.count(Health.HEALTHY)
        unhealthy = req.liveness.count(Health.UNHEALTHY)
        health.add_metric([Health.HEALTHY.value], healthy)
        health.add_metric([Health.UNHEALTHY.value], unhealthy)
        health.add_metric([Health.UNKNOWN.value], max(0, len(records) - healthy - unhealthy))
        yield health
        moves = CounterMetricFamily(
            "hive_node_health_transitions", "Health changes.", labels=["from", "to"]
        )
        for (old, new), count in sorted(req.liveness.transitions.items()):
            moves.add_metric([old, new], count)
        yield moves

    def _messages(self) -> Iterator[Metric]:
        membership = self._requester.membership
        received = CounterMetricFamily(
            "hive_node_messages_received", "Accepted node messages.", labels=["kind"]
        )
        rejected = CounterMetricFamily(
            "hive_node_messages_rejected", "Dropped node messages by reason.", labels=["reason"]
        )
        reserved = CounterMetricFamily(
            "hive_node_labels_dropped",
            "Node messages whose labels under the reserved hive.io/ prefix were ignored.",
        )
        if membership is not None:
            for kind, count in sorted(membership.received.items()):
                received.add_metric([kind], count)
            for reason, count in sorted(membership.rejected.items()):
                rejected.add_metric([reason], count)
        reserved.add_metric([], membership.labels_dropped if membership else 0)
        yield received
        yield rejected
        yield reserved

    def _api(self) -> Iterator[Metric]:
        node_api = self._requester.node_api
        served = CounterMetricFamily("hive_api_requests", "Operator API requests.", labels=["noun"])
        errors = CounterMetricFamily(
            "hive_api_errors", "Operator API error replies.", labels=["noun"]
        )
        if node_api is not None:
            served.add_metric(["node"], node_api.served)
            errors.add_metric(["node"], node_api.errors)
        job_api = self._requester.job_api
        if job_api is not None:
            served.add_metric(["job"], job_api.served)
            errors.add_metric(["job"], job_api.errors)
        yield served
        yield errors

    def _jobs(self) -> Iterator[Metric]:
        req = self._requester
        jobs = GaugeMetricFamily("hive_jobs", "Jobs by state.", labels=["state"])
        states = Counter(job.state for job in req.jobs.records()) if req.jobs else Counter()
        for state in JobState:
            jobs.add_metric([state.value], states[state])
        yield jobs
        executions = GaugeMetricFamily(
            "hive_executions", "Executions of known jobs by state.", labels=["state"]
        )
        by_state = req.jobs.execution_states() if req.jobs else Counter()
        for exec_state in ExecState:
            executions.add_metric([exec_state.value], by_state[exec_state])
        yield executions
        updates = CounterMetricFamily("hive_exec_updates", "Applied execution updates.")
        dropped = CounterMetricFamily(
            "hive_exec_updates_rejected", "Dropped execution updates by reason.", labels=["reason"]
        )
        consumer = req.exec_consumer
        updates.add_metric([], consumer.received if consumer else 0)
        for reason, count in sorted(consumer.rejected.items()) if consumer else []:
            dropped.add_metric([reason], count)
        yield updates
        yield dropped
        offers = CounterMetricFamily("hive_job_offers", "Offers sent to compute nodes.")
        offers.add_metric([], req.link.offers if req.link else 0)
        yield offers


def serve_metrics(requester: Requester, settings: MetricsSettings) -> MetricsServer:
    """Start the HTTP endpoint in a thread: live state, plus the scheduler's histograms."""
    registry = CollectorRegistry()
    registry.register(RequesterCollector(requester))
    if requester.duties is not None:
        registry.register(requester.duties.placement_seconds)
    if requester.link is not None:
        registry.register(requester.link.offer_seconds)
    return start_metrics(registry, settings)
