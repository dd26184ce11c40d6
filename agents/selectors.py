"""Reads of agents for lists, statistics and lookups."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum

from agents.models import Agent, Session
from console.models import UsageRecord, User

__all__ = ["agent_list", "agent_stats", "session_list"]


def agent_list(
    *,
    viewer: User,
    owner: User | None = None,
    status: str | None = None,
    model: str | None = None,
    q: str | None = None,
) -> QuerySet[Agent]:
    """Live (not deleted) agents ``viewer`` may see, optionally of one owner, in one status, of
    one model, or with ``q`` in their name."""
    agents = Agent.objects.filter(deleted_at__isnull=True).select_related("owner")
    if not viewer.is_staff:
        agents = agents.filter(owner=viewer)
    if owner is not None:
        agents = agents.filter(owner=owner)
    if status:
        agents = agents.filter(status=status)
    if model:
        agents = agents.filter(model=model)
    if q:
        agents = agents.filter(name__icontains=q)
    return agents.order_by("-created_at")


def session_list(
    *,
    viewer: User,
    agent_id: object = None,
    is_open: bool | None = None,
    q: str | None = None,
    with_messages: bool = False,
) -> QuerySet[Session]:
    """Sessions ``viewer`` may see (an operator, everyone's) with their message counts,
    optionally of one agent, open or closed, or with ``q`` in their title."""
    sessions = Session.objects.annotate(message_count=Count("messages"))
    if not viewer.is_staff:
        sessions = sessions.filter(user=viewer)
    if agent_id:
        sessions = sessions.filter(agent_id=agent_id)
    if is_open is not None:
        sessions = sessions.filter(closed_at__isnull=is_open)
    if q:
        sessions = sessions.filter(title__icontains=q)
    if with_messages:
        sessions = sessions.prefetch_related("messages")
    return sessions.order_by("-created_at")


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
