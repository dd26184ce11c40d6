"""The fleet's Prometheus metrics: spawns, counted by the process that boots an agent, and the
fleet's gauges, read from the database at scrape time (``FleetCollector``):

- ``hypercore_agent_spawn_total{status}`` and ``hypercore_agent_spawn_duration_seconds``;
- ``agent_active_sessions`` and ``hypercore_agent_active_count{status}``, with
  ``console_sandbox_capacity{resource}`` and ``console_sandbox_used{resource}`` (``vcpus``,
  ``memory_mib``) of the hosts taking agents.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from agents.selectors import fleet_counts

__all__ = ["RESUME_DURATION", "SPAWN_DURATION", "SPAWN_TOTAL", "FleetCollector"]

SPAWN_TOTAL = Counter("hypercore_agent_spawn", "Agent boots, by outcome.", ["status"])
SPAWN_DURATION = Histogram(
    "hypercore_agent_spawn_duration_seconds",
    "From queueing a boot to a healthy runtime.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
RESUME_DURATION = Histogram(
    "hypercore_agent_resume_duration_seconds",
    "From queueing a paused agent's resume to a healthy runtime.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30),
)


class FleetCollector:
    """``hypercore_agent_active_count{status}`` (agents pending, starting or running),
    ``agent_active_sessions`` (open sessions on running agents) and the sandbox capacity, from
    the database: every process reports the same values, whoever changed them."""

    def collect(self) -> Iterator[Any]:
        counts = fleet_counts()
        agents = GaugeMetricFamily(
            "hypercore_agent_active_count",
            "Agents pending, starting or running.",
            labels=["status"],
        )
        for status, count in counts.agents.items():
            agents.add_metric([status], count)
        yield agents
        yield GaugeMetricFamily(
            "agent_active_sessions",
            "Open sessions on running agents.",
            value=counts.sessions,
        )
        capacity = GaugeMetricFamily(
            "console_sandbox_capacity",
            "What the hosts taking agents (online, not draining) can hold, by resource.",
            labels=["resource"],
        )
        used = GaugeMetricFamily(
            "console_sandbox_used",
            "What active agents hold on the hosts taking agents, by resource.",
            labels=["resource"],
        )
        for resource in ("vcpus", "memory_mib", "gpus"):
            capacity.add_metric([resource], counts.capacity[resource])
            used.add_metric([resource], counts.used[resource])
        yield capacity
        yield used
