"""What the autoscaler observes of each pool: its agents by status, from the database (the
console's own record of what it runs), and its open sessions, from the database by default or
from Prometheus when ``PROMETHEUS_URL`` is set. The requests waiting for an owner's agent
(``demand_waiting``) always come from the database.

A pool is the non-deleted agents of one owner running one template (model and system prompt).
Every pool of a pass is read at once (two aggregate queries, or one query and two Prometheus
requests), whatever the number of rules. A read that fails gives each pool an observation
marked failed, with the error, which the policy meets with the rule's fallback.

Prometheus learns the agents from the console: ``scaling.selectors.agent_scrape_targets``
lists every running agent, served to Prometheus' HTTP service discovery (``http_sd_configs``)
at ``/metrics/targets``, as a target scraped through the console's ``/agents/<id>/metrics``
route and labelled ``agent_id``, ``model``, ``owner`` (a username) and ``pool``: the name of
the scaling rule, enabled or paused, whose pool the agent is in ("" when none). Each runtime
exports ``agent_active_sessions``, the sessions it holds, so Prometheus is asked, with the
instant query API (``/api/v1/query``), for ``sum by (pool) (agent_active_sessions{pool!=""})``,
a pool's sessions, and ``count by (pool) (agent_active_sessions{pool!=""})``, how many of its
runtimes it scrapes. (The console's own ``/metrics`` has a fleet-wide ``agent_active_sessions``
too, with no ``pool``: the matcher leaves it out; ``hypercore_agent_active_count`` is
fleet-wide, by status, and has no pool to be summed by.) The agent count the policy acts on is
always the database's; Prometheus' count is kept beside it in the decision's inputs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from django.conf import settings
from django.db.models import Count, Q

from agents.models import Agent, AgentDemand, Session

__all__ = [
    "AGENTS_QUERY",
    "SESSIONS_QUERY",
    "PoolKey",
    "PoolReading",
    "PrometheusError",
    "demand_waiting",
    "pools_observe",
    "prometheus_query",
]

SESSIONS_QUERY = 'sum by (pool) (agent_active_sessions{pool!=""})'
AGENTS_QUERY = 'count by (pool) (agent_active_sessions{pool!=""})'

_ACTIVE = list(Agent.ACTIVE_STATUSES)


@dataclass(frozen=True, slots=True)
class PoolKey:
    """The agents of one owner and one template."""

    owner_id: int
    model: str
    system_prompt: str


@dataclass(slots=True)
class PoolReading:
    """One pool's agents (booting or serving; draining ones apart) and open sessions; the
    sessions are None, with ``error``, when they could not be read."""

    agents: int = 0
    sessions: int | None = 0
    by_status: dict[str, int] = field(default_factory=dict)
    draining: int = 0
    source: str = "database"
    error: str = ""
    prometheus_agents: float | None = None
    waiting: int = 0

    def as_inputs(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "agents": self.agents,
            "sessions": self.sessions,
            "waiting": self.waiting,
            "agents_by_status": dict(sorted(self.by_status.items())),
            "draining": self.draining,
            "prometheus_agents": self.prometheus_agents,
            "error": self.error,
        }


class PrometheusError(Exception):
    """Prometheus could not be asked, or answered with an error or an unexpected shape."""


def _agent_counts(keys: Iterable[PoolKey]) -> dict[PoolKey, PoolReading]:
    keys = set(keys)
    readings = {key: PoolReading() for key in keys}
    if not keys:
        return readings
    rows = (
        Agent.objects.filter(
            deleted_at__isnull=True,
            status__in=_ACTIVE,
            owner_id__in={k.owner_id for k in keys},
            model__in={k.model for k in keys},
        )
        .values_list("owner_id", "model", "system_prompt", "status")
        .annotate(
            serving=Count("id", filter=Q(draining_since__isnull=True)),
            draining=Count("id", filter=Q(draining_since__isnull=False)),
        )
        .order_by()
    )
    for owner_id, model, prompt, status, serving, draining in rows:
        reading = readings.get(PoolKey(owner_id, model, prompt))
        if reading is None:
            continue  # the same owner and model, another template
        reading.agents += serving
        reading.draining += draining
        reading.by_status[status] = reading.by_status.get(status, 0) + serving
    return readings


def _database_sessions(keys: set[PoolKey]) -> dict[PoolKey, int]:
    rows = (
        Session.objects.filter(
            closed_at__isnull=True,
            agent__deleted_at__isnull=True,
            agent__status__in=_ACTIVE,
            agent__owner_id__in={k.owner_id for k in keys},
            agent__model__in={k.model for k in keys},
        )
        .values_list("agent__owner_id", "agent__model", "agent__system_prompt")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts: dict[PoolKey, int] = defaultdict(int)
    for owner_id, model, prompt, n in rows:
        counts[PoolKey(owner_id, model, prompt)] += n
    return counts


def prometheus_query(*, url: str, query: str, timeout: float) -> dict[str, float]:
    """An instant vector query's values by their ``pool`` label ("" for a series without one)."""
    try:
        response = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PrometheusError(f"Prometheus at {url} could not be reached: {exc}") from exc
    try:
        body = response.json()
    except ValueError as exc:
        raise PrometheusError(
            f"Prometheus answered {response.status_code} with a body that is not JSON"
        ) from exc
    if not isinstance(body, dict) or body.get("status") != "success":
        message = body.get("error", "no error given") if isinstance(body, dict) else "no object"
        raise PrometheusError(f"Prometheus answered {response.status_code}: {message}")
    data = body.get("data") or {}
    if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise PrometheusError(f"Prometheus answered a {data.get('resultType')}, not a vector")
    values: dict[str, float] = {}
    for series in data["result"]:
        try:
            pool = str(series.get("metric", {}).get("pool", ""))
            value = float(series["value"][1])
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusError(f"Prometheus answered a malformed sample: {series!r}") from exc
        if not math.isfinite(value) or value < 0:
            raise PrometheusError(f"Prometheus answered {value} for pool {pool!r}")
        values[pool] = values.get(pool, 0.0) + value
    return values


def pools_observe(
    *, pools: Mapping[str, PoolKey], prometheus_url: str | None = None
) -> dict[str, PoolReading]:
    """Each pool's reading, by its rule's name. ``prometheus_url`` defaults to the setting;
    empty, the sessions come from the database."""
    url = settings.PROMETHEUS_URL if prometheus_url is None else prometheus_url
    counts = _agent_counts(pools.values())
    readings = {name: _copy(counts[key]) for name, key in pools.items()}
    if not pools:
        return readings
    if not url:
        sessions = _database_sessions(set(pools.values()))
        for name, key in pools.items():
            readings[name].sessions = sessions.get(key, 0)
        return readings
    timeout = settings.PROMETHEUS_TIMEOUT_SECONDS
    try:
        by_pool = prometheus_query(url=url, query=SESSIONS_QUERY, timeout=timeout)
        agents = prometheus_query(url=url, query=AGENTS_QUERY, timeout=timeout)
    except PrometheusError as exc:
        for reading in readings.values():
            reading.source, reading.sessions, reading.error = "prometheus", None, str(exc)
        return readings
    for name, reading in readings.items():
        reading.source = "prometheus"
        reading.prometheus_agents = agents.get(name)
        if name in by_pool:
            reading.sessions = round(by_pool[name])
        elif reading.agents + reading.draining:
            reading.sessions = None
            reading.error = f"Prometheus has no agent_active_sessions series for pool {name!r}"
        else:
            reading.sessions = 0  # no agents, no series: nothing to report
    return readings


def demand_waiting(*, owner_ids: Iterable[int], now: datetime) -> dict[int, int]:
    """The requests waiting for an agent of each owner's (``agents.models.AgentDemand``), in
    one query; owners with none are left out. The database's, even with Prometheus: it is the
    console's own record, as the agent count is."""
    rows = (
        AgentDemand.objects.filter(owner_id__in=set(owner_ids), expires_at__gt=now)
        .values_list("owner_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    return dict(rows)


def _copy(reading: PoolReading) -> PoolReading:
    return PoolReading(
        agents=reading.agents,
        sessions=reading.sessions,
        by_status=dict(reading.by_status),
        draining=reading.draining,
    )
