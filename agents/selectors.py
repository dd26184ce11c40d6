"""Reads of agents for lists, statistics and lookups."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum

from agents.models import Agent, Session
from console.models import UsageRecord, User

__all__ = ["agent_list", "agent_stats"]


def agent_list(*, viewer: User, owner: User | None = None) -> QuerySet[Agent]:
    """Live (not deleted) agents ``viewer`` may see, optionally of one owner."""
    agents = Agent.objects.filter(deleted_at__isnull=True).select_related("owner")
    if not viewer.is_staff:
        agents = agents.filter(owner=viewer)
    if owner is not None:
        agents = agents.filter(owner=owner)
    return agents.order_by("-created_at")


def agent_stats(*, viewer: User) -> dict[str, Any]:
    """Counts of agents by status, sessions, tokens and cost: everyone's for an operator."""
    agents = Agent.objects.filter(deleted_at__isnull=True)
    sessions = Session.objects.all()
    usage = UsageRecord.objects.all()
    if not viewer.is_staff:
        agents, sessions, usage = (
            agents.filter(owner=viewer),
            sessions.filter(user=viewer),
            usage.filter(user=viewer),
        )
    by_status = dict(agents.values_list("status").annotate(n=Count("id")).order_by())
    session_counts = sessions.aggregate(
        total=Count("id"), open=Count("id", filter=Q(closed_at__isnull=True))
    )
    totals = usage.aggregate(
        input=Sum("input_tokens"), output=Sum("output_tokens"), cost=Sum("cost_usd")
    )
    return {
        "scope": "all" if viewer.is_staff else "own",
        "total_agents": sum(by_status.values()),
        "active_agents": sum(by_status.get(s, 0) for s in Agent.ACTIVE_STATUSES),
        "by_status": {status: by_status.get(status, 0) for status in Agent.Status.values},
        "total_sessions": session_counts["total"],
        "open_sessions": session_counts["open"],
        "input_tokens": totals["input"] or 0,
        "output_tokens": totals["output"] or 0,
        "cost_usd": str(totals["cost"] or Decimal(0)),
    }
