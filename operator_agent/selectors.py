"""Reads of operator agents: lists for the pages and the API, what each spent today against its
cap, the calls waiting for approval, the agents due a run, and the estimate of what an agent
costs an hour."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Prefetch, QuerySet, Sum
from django.utils import timezone

from agents.models import Agent
from console.models import Budget, UsageHourly
from console.selectors import budget_windows
from operator_agent.models import OperatorAction, OperatorAgent, OperatorRun

__all__ = [
    "AgentSpend",
    "agent_hour_cost",
    "agent_hour_cost_of",
    "operator_agent_list",
    "operator_agents_due",
    "operator_approvals_pending",
    "operator_runs",
    "operator_spend",
]

# The window whose ledger estimates an agent's hourly cost.
_COST_HISTORY = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class AgentSpend:
    """What an agent's calls to Claude used today (in flight included) of its daily cap."""

    used: Decimal
    cap: Decimal

    @property
    def percent(self) -> float:
        return 100.0 if self.cap <= 0 else min(100.0, float(self.used * 100 / self.cap))


def operator_agent_list() -> QuerySet[OperatorAgent]:
    in_progress = OperatorRun.objects.filter(
        agent=OuterRef("pk"), status__in=OperatorRun.IN_PROGRESS
    )
    return OperatorAgent.objects.select_related("user").annotate(busy=Exists(in_progress))


def operator_spend(agents: list[OperatorAgent]) -> dict[int, AgentSpend]:
    """Agent id → what it spent today against its cap (one query)."""
    budgets = list(
        Budget.objects.filter(
            user_id__in=[agent.user_id for agent in agents],
            metric=Budget.Metric.USD,
            window=Budget.Window.DAY,
        )
    )
    windows = budget_windows(budgets=budgets, timezones={})
    used = {b.user_id: windows[b.pk].used + b.reserved for b in budgets}
    return {
        agent.pk: AgentSpend(used.get(agent.user_id, Decimal(0)), agent.daily_usd_cap)
        for agent in agents
    }


def operator_runs(*, agent: OperatorAgent, limit: int = 10) -> list[OperatorRun]:
    """The agent's latest runs, each with its actions."""
    actions = OperatorAction.objects.select_related("decided_by").order_by("at", "pk")
    return list(
        OperatorRun.objects.filter(agent=agent)
        .defer("messages")
        .prefetch_related(Prefetch("actions", queryset=actions))[:limit]
    )


def operator_approvals_pending() -> QuerySet[OperatorAction]:
    """Calls waiting for a person, oldest first (expired ones not yet swept are left out)."""
    return (
        OperatorAction.objects.filter(
            status=OperatorAction.Status.PENDING, expires_at__gt=timezone.now()
        )
        .select_related("run__agent")
        .defer("run__messages")
        .order_by("at", "pk")
    )


def operator_agents_due() -> list[int]:
    """The enabled agents whose interval has passed since their last run, with none in
    progress."""
    now = timezone.now()
    in_progress = OperatorRun.objects.filter(
        agent=OuterRef("pk"), status__in=OperatorRun.IN_PROGRESS
    )
    agents = OperatorAgent.objects.filter(enabled=True).exclude(Exists(in_progress))
    due = []
    for agent_id, every, last in agents.values_list("pk", "every_minutes", "last_run_at"):
        if last is None or last + timedelta(minutes=every) <= now + timedelta(seconds=1):
            due.append(agent_id)
    return due


def agent_hour_cost(*, model: str) -> Decimal:
    """What an agent of ``model`` is expected to cost an hour: the mean cost of an agent-hour
    of that model in the ledger of the last week (each hour an agent made calls in), or
    ``OPERATOR_AGENT_HOUR_USD`` when there is none."""
    since = timezone.now() - _COST_HISTORY
    found = (
        UsageHourly.objects.filter(model=model, hour__gte=since)
        .exclude(agent_id="")
        .aggregate(total=Sum("cost_usd"), hours=Count("pk"))
    )
    if not found["hours"]:
        return Decimal(settings.OPERATOR_AGENT_HOUR_USD)
    return (found["total"] / found["hours"]).quantize(Decimal("0.0001"))


def agent_hour_cost_of(*, agent_id: str) -> Decimal:
    """What the agent ``agent_id`` is expected to cost an hour, by its model (nothing: no such
    agent)."""
    model = Agent.objects.filter(pk=agent_id).values_list("model", flat=True).first()
    return agent_hour_cost(model=model) if model else Decimal(0)
