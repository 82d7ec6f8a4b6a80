"""Prometheus metrics for the node agent, read from live state at scrape time.

Like the requester's: a collector reads the agent's plain-int counters and its ledger
when scraped, so the heartbeat and offer paths pay nothing. It runs on the HTTP server's
thread, so it reads only snapshots taken in one C-level copy (`list(...)`, `dict(...)`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hivectl.core.config import MetricsSettings
from hivectl.core.jobs import ExecState
from hivectl.core.metrics import MetricsServer, start_metrics

if TYPE_CHECKING:
    from nodeagent.service import NodeAgent


RESOURCES = ("cpu", "memory", "disk", "gpu")  # cpu in cores, memory and disk in bytes
FINAL_STATES = (ExecState.COMPLETED, ExecState.FAILED, ExecState.CANCELLED)


class AgentCollector(Collector):
    def __init__(self, agent: NodeAgent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        yield from self._capacity()
        yield from self._executions()
        yield from self._messages()

    def _capacity(self) -> Iterator[Metric]:
        capacity = GaugeMetricFamily(
            "hive_agent_capacity",
            "Capacity for jobs on this node (cpu in cores, memory and disk in bytes).",
            labels=["resource", "kind"],
        )
        ledger = self._agent.ledger
        if ledger is not None:
            allocatable, locked = ledger.allocatable, ledger.locked
            for name in RESOURCES:
                total = float(getattr(allocatable, name))
                capacity.add_metric([name, "allocatable"], total)
                capacity.add_metric(
                    [name, "available"], max(0.0, total - float(getattr(locked, name)))
                )
        yield capacity

    def _executions(self) -> Iterator[Metric]:
        executions = self._agent.executions
        running = GaugeMetricFamily(
            "hive_agent_executions_running", "Executions running on this node."
        )
        running.add_metric([], len(executions.runs) if executions is not None else 0)
        yield running
        ended = CounterMetricFamily(
            "hive_agent_executions", "Executions finished here, by state.", labels=["state"]
        )
        counts = dict(executions.ended) if executions is not None else {}
        for state in FINAL_STATES:
            ended.add_metric([state.value], counts.get(state.value, 0))
        yield ended
        offers = CounterMetricFamily(
            "hive_agent_offers", "Offers from the requester, by answer.", labels=["result"]
        )
        offers.add_metric(["accepted"], executions.accepted if executions is not None else 0)
        offers.add_metric(["rejected"], executions.rejected if executions is not None else 0)
        yield offers

    def _messages(self) -> Iterator[Metric]:
        agent = self._agent
        heartbeats = CounterMetricFamily("hive_agent_heartbeats_sent", "Heartbeats sent.")
        heartbeats.add_metric([], agent.heartbeats_sent)
        yield heartbeats
        resources = CounterMetricFamily(
            "hive_agent_resource_updates_sent", "Resource reports sent."
        )
        resources.add_metric([], agent.resource_updates_sent)
        yield resources
        errors = CounterMetricFamily(
            "hive_agent_errors", "Loop iterations that failed (logged, then retried)."
        )
        errors.add_metric([], agent.errors)
        yield errors
        up = GaugeMetricFamily("hive_agent_joined", "1 while the requester knows this node.")
        up.add_metric([], 1.0 if agent.active else 0.0)
        yield up


def serve_metrics(agent: NodeAgent, settings: MetricsSettings) -> MetricsServer:
    """Start the HTTP endpoint in a thread."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    return start_metrics(registry, settings, node_id=agent.node_id)
