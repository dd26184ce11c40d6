"""Reads for the operator dashboard. Each returns plain values with a fixed number of queries,
whatever the size of the fleet, so that a page refreshing every few seconds stays cheap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from agents.models import Agent, SandboxHost, Session
from agents.selectors import agent_list
from agents.services.hosts import gpus_free, gpus_held, hosts_usage
from console.models import AuditEvent, User
from console.selectors import rates_in_minutes, usage_totals
from scaling.models import ScalingDecision, ScalingRule
from scaling.selectors import scaling_decision_list, scaling_rule_list

__all__ = [
    "HostLoad",
    "Page",
    "agent_lookup",
    "agent_models",
    "audit_filter_choices",
    "dashboard_agent_list",
    "decision_list",
    "fleet_overview",
    "host_loads",
    "page_of",
    "rule_list",
]


@dataclass(frozen=True, slots=True)
class HostLoad:
    """A sandbox host, with what its active agents take of its capacity."""

    host: SandboxHost
    agents: int
    vcpus: int
    memory_mib: int
    gpus: int = 0  # GPUs and MIG slices held by its agents
    gpus_total: int = 0  # of the host's

    @property
    def gpu_percent(self) -> int:
        return _percent(self.gpus, self.gpus_total)

    @property
    def vcpu_percent(self) -> int:
        return _percent(self.vcpus, self.host.capacity_vcpus)

    @property
    def memory_percent(self) -> int:
        return _percent(self.memory_mib, self.host.capacity_memory_mib)

    @property
    def state(self) -> str:
        if not self.host.is_online:
            return "offline"
        return "draining" if self.host.is_draining else "online"


def _percent(used: int, capacity: int) -> int:
    return min(100, round(100 * used / capacity)) if capacity else 0


def host_loads() -> list[HostLoad]:
    """Every sandbox host and its load; three queries."""
    hosts = list(SandboxHost.objects.order_by("name"))
    ids = [host.pk for host in hosts]
    usage = hosts_usage(host_ids=ids) if hosts else {}
    held = gpus_held(host_ids=ids) if hosts else {}
    loads = []
    for host in hosts:
        total = len(gpus_free(host, set()))
        loads.append(
            HostLoad(
                host=host,
                agents=usage[host.pk]["agents"],
                vcpus=usage[host.pk]["vcpus"],
                memory_mib=usage[host.pk]["memory"],
                gpus=total - len(gpus_free(host, held[host.pk])),
                gpus_total=total,
            )
        )
    return loads


def fleet_overview(*, now: datetime | None = None, decisions: int = 8) -> dict[str, Any]:
    """What the overview shows: agents by status, sessions, the request rate, tokens and cost
    since midnight (UTC), the hosts and the latest scaling decisions."""
    now = now or timezone.now()
    by_status = dict(
        Agent.objects.filter(deleted_at__isnull=True)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    statuses = [(status, by_status.get(status, 0)) for status in Agent.Status.values]
    total_agents = sum(by_status.values())
    sessions = Session.objects.aggregate(
        open=Count("id", filter=Q(closed_at__isnull=True)),
        today=Count("id", filter=Q(created_at__gte=_midnight(now))),
    )
    return {
        "now": now,
        "statuses": statuses,
        "status_bar": [
            (status, count, round(100 * count / total_agents, 2))
            for status, count in statuses
            if count
        ],
        "total_agents": total_agents,
        "active_agents": sum(by_status.get(s, 0) for s in Agent.ACTIVE_STATUSES),
        "open_sessions": sessions["open"],
        "sessions_today": sessions["today"],
        **_request_rate(now),
        "today": usage_totals(user_ids=None, start=_midnight(now), end=now),
        "hosts": host_loads(),
        "decisions": list(scaling_decision_list().select_related("rule")[:decisions]),
    }


def _midnight(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _request_rate(now: datetime) -> dict[str, int]:
    """API requests (gateway calls among them) of every user in the last whole minute, and in
    the minute under way; from the rate limiter's per-user counters, in one query (or two
    Redis commands)."""
    current = now.replace(second=0, microsecond=0)
    previous = current - timedelta(minutes=1)
    counts = {
        minute: sum(requests for requests, _ in scopes.values())
        for minute, scopes in rates_in_minutes([previous, current], prefix="user:").items()
    }
    return {"requests_last_minute": counts[previous], "requests_this_minute": counts[current]}


# --- Pages of a list -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, read with a single query (one row more than the page tells whether
    another follows)."""

    items: list[Any]
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def next_number(self) -> int:
        return self.number + 1

    @property
    def previous_number(self) -> int:
        return self.number - 1


def page_of(queryset: QuerySet, *, number: int, size: int) -> Page:
    """Page ``number`` (from 1) of ``size`` rows of an ordered ``queryset``."""
    number = max(1, number)
    start = (number - 1) * size
    rows = list(queryset[start : start + size + 1])
    return Page(items=rows[:size], number=number, has_next=len(rows) > size)


# --- Agents, decisions, the audit log's filters ------------------------------------------------


def dashboard_agent_list(
    *,
    viewer: User,
    status: str | None = None,
    model: str | None = None,
    owner: str | None = None,
    q: str | None = None,
) -> QuerySet[Agent]:
    """Live agents for the operator's list (its views are behind ``operator_required``), with
    their owners and hosts; ``owner`` is a username, ``q`` part of the agent's name or its id."""
    agents = agent_list(viewer=viewer, operator=True, status=status, model=model)
    agents = agents.select_related("host")
    if owner:
        agents = agents.filter(owner__username=owner)
    if q:
        match = Q(name__icontains=q)
        if _hexish(q):
            match |= Q(id__startswith=q.replace("-", ""))
        agents = agents.filter(match)
    return agents.order_by("-created_at", "-id")


def _hexish(text: str) -> bool:
    return all(c in "0123456789abcdef-" for c in text.lower())


def agent_lookup(*, live: bool) -> QuerySet[Agent]:
    """Agents with their owners and hosts, to fetch one by id: only those not deleted when
    ``live``."""
    agents = Agent.objects.select_related("owner", "host")
    return agents.filter(deleted_at__isnull=True) if live else agents


def agent_models() -> list[str]:
    """The models live agents run, for the list's filter; one query."""
    return list(
        Agent.objects.filter(deleted_at__isnull=True)
        .order_by("model")
        .values_list("model", flat=True)
        .distinct()
    )


def rule_list() -> QuerySet[ScalingRule]:
    """Scaling rules with their owners: the rules' table, and a rule fetched by id."""
    return scaling_rule_list().select_related("owner")


def decision_list(*, rule_id: int | None = None) -> QuerySet[ScalingDecision]:
    """Scaling decisions, newest first, with their rules, of one rule when given."""
    return (
        scaling_decision_list(rule_id=rule_id).select_related("rule").order_by("-created_at", "-id")
    )


def audit_filter_choices() -> dict[str, list[Any]]:
    """The actions and target types the log holds, and who acted, for the filters; three
    queries."""
    return {
        "actions": list(
            AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct()
        ),
        "target_types": list(
            AuditEvent.objects.order_by("target_type")
            .values_list("target_type", flat=True)
            .distinct()
        ),
        "actors": list(
            User.objects.filter(pk__in=AuditEvent.objects.values("actor_id"))
            .order_by("username")
            .only("id", "username")
        ),
    }
