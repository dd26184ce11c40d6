"""Reads of agents for lists, statistics and lookups."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum

from agents.models import Agent, Message, SandboxHost, ServingProcess, Session
from console.models import Budget, UsageRecord, User
from console.selectors import budget_windows
from console.services import ledger_sql
from vmdriver.gpus import gpus_from_inventory, units_of

__all__ = [
    "FleetCounts",
    "MetricsMachine",
    "agent_list",
    "agent_page",
    "agent_rows",
    "agent_stats",
    "chat_budgets",
    "chat_session",
    "chat_session_owned",
    "chat_sessions",
    "chat_snapshot",
    "fleet_counts",
    "message_data",
    "metrics_machines",
    "session_list",
]


def agent_list(
    *,
    viewer: User,
    operator: bool = False,
    owner: User | None = None,
    status: str | None = None,
    model: str | None = None,
    q: str | None = None,
) -> QuerySet[Agent]:
    """Live (not deleted) agents ``viewer`` may see (``operator``, as ``is_operator`` decided:
    everyone's), optionally of one owner, in one status, of one model, or with ``q`` in their
    name."""
    agents = Agent.objects.filter(deleted_at__isnull=True).select_related("owner")
    if not operator:
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


AGENT_ROW_FIELDS = (
    "id",
    "status",
    "created_at",
    "owner__username",
    "vcpus",
    "memory_mib",
    "max_concurrent_sessions",
    "name",
    "model",
    "backend",
    "accel",
    "architecture",
    "last_error",
    "gpus",
    "on_idle",
    "paused_at",
    "pause_method",
)


def agent_rows(agents: QuerySet[Agent]) -> QuerySet[Agent, dict[str, Any]]:
    """``agents`` as plain rows of what a list shows (``serializers.agent_row_data``): no model
    instances to build, which is most of a list's cost."""
    return agents.values(*AGENT_ROW_FIELDS)


_PAGE_FIELDS = tuple(name for name in AGENT_ROW_FIELDS if name != "owner__username")


def agent_page(
    *, viewer: User, operator: bool = False, owner: User | None = None
) -> list[dict[str, Any]]:
    """``agent_rows(agent_list(viewer=…, operator=…, owner=…))``, read as one SQL statement:
    the agent list is the API's most asked-for page, and building and compiling its queryset
    cost more CPU than the rest of the request."""
    a, u = ledger_sql.names(Agent), ledger_sql.names(User)
    where, params = [f"{a.table}.{a.deleted_at} IS NULL"], []
    for user in (None if operator else viewer, owner):
        if user is not None:
            where.append(f"{a.table}.{a.owner_id} = %s")
            params.append(ledger_sql.bind(Agent, "owner_id", user.pk))
    sql = (
        f"SELECT {ledger_sql.columns(Agent, _PAGE_FIELDS, qualified=True)}, "
        f"{u.table}.{u.username} FROM {a.table} "
        f"INNER JOIN {u.table} ON {u.table}.{u.id} = {a.table}.{a.owner_id} "
        f"WHERE {' AND '.join(where)} ORDER BY {a.table}.{a.created_at} DESC"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    values = ledger_sql.converted(Agent, _PAGE_FIELDS, (row[:-1] for row in rows))
    return [
        dict(zip(_PAGE_FIELDS, found, strict=True)) | {"owner__username": row[-1]}
        for found, row in zip(values, rows, strict=True)
    ]


def session_list(
    *,
    viewer: User,
    operator: bool = False,
    agent_id: object = None,
    is_open: bool | None = None,
    q: str | None = None,
    with_messages: bool = False,
) -> QuerySet[Session]:
    """Sessions ``viewer`` may see (``operator``: everyone's) with their message counts,
    optionally of one agent, open or closed, or with ``q`` in their title."""
    sessions = Session.objects.annotate(message_count=Count("messages"))
    if not operator:
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


def agent_stats(*, viewer: User, operator: bool = False) -> dict[str, Any]:
    """Counts of agents by status, sessions, tokens and cost: everyone's for an operator."""
    agents = Agent.objects.filter(deleted_at__isnull=True)
    sessions = Session.objects.all()
    usage = UsageRecord.objects.all()
    if not operator:
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
        "scope": "all" if operator else "own",
        "total_agents": sum(by_status.values()),
        "active_agents": sum(by_status.get(s, 0) for s in Agent.ACTIVE_STATUSES),
        "by_status": {status: by_status.get(status, 0) for status in Agent.Status.values},
        "total_sessions": session_counts["total"],
        "open_sessions": session_counts["open"],
        "input_tokens": totals["input"] or 0,
        "output_tokens": totals["output"] or 0,
        "cost_usd": str(totals["cost"] or Decimal(0)),
    }


# --- The chat page -------------------------------------------------------------------------------


def chat_sessions(*, user: User, q: str | None = None, limit: int = 100) -> QuerySet[Session]:
    """The user's own sessions with live agents, most recently active first, optionally with
    ``q`` in their title."""
    sessions = Session.objects.filter(user=user, agent__deleted_at__isnull=True)
    if q:
        sessions = sessions.filter(title__icontains=q)
    return (
        sessions.select_related("agent")
        .only("id", "title", "updated_at", "closed_at", "agent__name", "agent__status")
        .order_by("-updated_at")[:limit]
    )


def chat_session(*, user: User, session_id: object) -> Session | None:
    """One of the user's own sessions, with its agent and messages."""
    return (
        Session.objects.filter(pk=session_id, user=user, agent__deleted_at__isnull=True)
        .select_related("agent")
        .prefetch_related("messages")
        .first()
    )


def chat_session_owned(*, user: User, session_id: object) -> bool:
    """Whether the session is the user's own (with a live agent)."""
    return Session.objects.filter(pk=session_id, user=user, agent__deleted_at__isnull=True).exists()


def chat_snapshot(*, user: User, session_id: object) -> dict[str, Any] | None:
    """One of the user's sessions as the chat's ``session`` event carries it
    (``wire.events.SessionEvent``, without ``seq`` and ``running``)."""
    session = chat_session(user=user, session_id=session_id)
    if session is None:
        return None
    return {
        "type": "session",
        "session_id": str(session.pk),
        "title": session.title,
        "agent_id": str(session.agent_id),
        "agent_name": session.agent.name,
        "agent_status": session.agent.status,
        "closed": session.closed_at is not None,
        "messages": [message_data(m) for m in session.messages.all()],
        "budgets": chat_budgets(user=user),
    }


def message_data(message: Message) -> dict[str, Any]:
    """A message as the chat's events carry it (``wire.events.MessageData``)."""
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "input_tokens": message.input_tokens,
        "output_tokens": message.output_tokens,
        "cost_usd": str(message.cost_usd),
        "created_at": message.created_at.isoformat(),
    }


def chat_budgets(*, user: User) -> list[dict[str, str]]:
    """The user's budgets in their current windows, with what is left
    (``wire.events.BudgetLeft``): reserved calls in flight count as used."""
    budgets = list(Budget.objects.filter(user=user).select_related("user__quota"))
    if not budgets:
        return []
    quota = getattr(budgets[0].user, "quota", None)  # joined above, fresh
    windows = budget_windows(
        budgets=budgets, timezones={user.pk: quota.timezone if quota else "UTC"}
    )
    found = []
    for budget in budgets:
        used = windows[budget.pk].used + budget.reserved
        left = max(budget.limit - used, Decimal(0)).quantize(Decimal("0.0001"))
        found.append(
            {
                "metric": budget.metric,
                "window": budget.get_window_display()
                if budget.window != Budget.Window.ROLLING
                else f"{budget.rolling_hours} h",
                # Fixed-point text: a normalized 40 would read "4E+1".
                "limit": f"{budget.limit.normalize():f}",
                "used": f"{used.quantize(Decimal('0.0001')).normalize():f}",
                "remaining": f"{left.normalize():f}",
            }
        )
    return found


# --- The fleet -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """Agents by active status (every one of them, zero included), the open sessions of
    running agents, and the sandbox capacity of the hosts taking agents (online, not draining)
    with what active agents hold of it, by resource (``vcpus``, ``memory_mib``)."""

    agents: dict[str, int]
    sessions: int
    capacity: dict[str, int]
    used: dict[str, int]


def fleet_counts() -> FleetCounts:
    """Five queries, whatever the fleet's size: what ``/metrics`` shows of it."""
    by_status = dict(
        Agent.objects.filter(status__in=Agent.ACTIVE_STATUSES, deleted_at__isnull=True)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
    )
    sessions = Session.objects.filter(
        closed_at__isnull=True,
        agent__status=Agent.Status.RUNNING,
        agent__deleted_at__isnull=True,
    ).count()
    hosts = SandboxHost.objects.filter(is_online=True, is_draining=False)
    capacity = hosts.aggregate(vcpus=Sum("capacity_vcpus"), memory_mib=Sum("capacity_memory_mib"))
    capacity["gpus"] = sum(
        len(units_of(gpus_from_inventory(gpus))) for gpus in hosts.values_list("gpus", flat=True)
    )
    used = Agent.objects.filter(
        status__in=Agent.ACTIVE_STATUSES, deleted_at__isnull=True, host__in=hosts
    ).aggregate(vcpus=Sum("vcpus"), memory_mib=Sum("memory_mib"), gpus=Sum("gpu_count"))
    return FleetCounts(
        agents={str(status): by_status.get(status, 0) for status in Agent.ACTIVE_STATUSES},
        sessions=sessions,
        capacity={name: value or 0 for name, value in capacity.items()},
        used={name: value or 0 for name, value in used.items()},
    )


@dataclass(frozen=True, slots=True)
class MetricsMachine:
    """A machine of the console, as Prometheus scrapes it: one ``/metrics`` for its processes."""

    machine: str
    metrics_url: str
    kinds: tuple[str, ...]  # of the processes alive on it: "gateway", "relay", "web"


# A machine's processes may name different URLs (a relay's and the console's on one machine
# share a multiprocess folder): the first of these kinds is read, so nothing is counted twice.
_SCRAPED_FIRST = ("web", "gateway", "relay")


def metrics_machines(*, now: datetime) -> list[MetricsMachine]:
    """Every machine with a web, gateway or relay process heard from within
    PROCESS_STALE_SECONDS of ``now``, by name, with the URL to scrape it at."""
    since = now - timedelta(seconds=settings.PROCESS_STALE_SECONDS)
    rows = (
        ServingProcess.objects.filter(seen_at__gte=since)
        .order_by("machine")
        .values_list("machine", "kind", "metrics_url")
    )
    by_machine: dict[str, dict[str, str]] = {}
    for machine, kind, url in rows:
        by_machine.setdefault(machine, {})[kind] = url
    return [
        MetricsMachine(
            machine=machine,
            metrics_url=urls[min(urls, key=_SCRAPED_FIRST.index)],
            kinds=tuple(sorted(urls)),
        )
        for machine, urls in by_machine.items()
    ]
