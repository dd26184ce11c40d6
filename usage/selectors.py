"""Reads for the usage pages: a report of one range (the table in any grouping, cost over time
by model, the top users and agents), budget burn-downs with the date each runs out at its
recent rate, and, for operators, the users nearest their limits and the refusals of a day.

Every read is a fixed number of queries whatever the ledger's size; ranges are exact (see
``console.ledger_reads``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.db.models import Count, Sum
from django.utils import timezone

from agents.models import Agent
from console.ledger_reads import (
    AMOUNTS,
    TOKEN_KINDS,
    Listing,
    finish,
    usage_grouped,
    usage_hours,
    usage_listed,
    zero,
)
from console.models import Budget, Quota, Refusal, User
from console.selectors import (
    LimitStanding,
    budget_standings,
    budget_windows,
    calls_in_flight,
    limit_standing,
    nearest_full,
    rates_in_minutes,
)

__all__ = [
    "GROUPINGS",
    "Burndown",
    "LimitStanding",
    "RefusalCount",
    "UsageReport",
    "budget_burndowns",
    "limits_nearest",
    "refusals_by_limit",
    "usage_report",
    "user_choices",
]

Grouping = Literal["user", "agent", "model", "day", "hour"]
GROUPINGS: tuple[Grouping, ...] = ("user", "agent", "model", "day", "hour")
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
# Up to this long a range's chart has a bar per hour; longer, a bar per day.
HOURLY_CHART_UP_TO = timedelta(days=2)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bar of the cost chart: its start and the cost of each model in it."""

    at: datetime | date
    costs: dict[str, Decimal]

    @property
    def total(self) -> Decimal:
        return sum(self.costs.values(), Decimal(0))


@dataclass(frozen=True, slots=True)
class Ranked:
    """A user or an agent with its cost in the range, for the top lists."""

    key: Any
    label: str
    cost_usd: Decimal
    user_id: int | None = None


@dataclass(slots=True)
class UsageReport:
    """One range's usage as the page shows it: ``rows`` of the table (each its ``key``,
    ``label``, ``sub``, the counts, tokens and cost), ``hidden`` groups past the row limit, the
    ``totals``, the chart's ``buckets`` (every one in the range, empty ones too) and ``models``
    (dearest first), and the top users and agents."""

    start: datetime
    end: datetime
    group_by: Grouping
    bucket: Literal["day", "hour"]
    rows: list[dict[str, Any]]
    hidden: int
    totals: dict[str, Any]
    models: list[str]
    buckets: list[Bucket]
    top_users: list[Ranked] = field(default_factory=list)
    top_agents: list[Ranked] = field(default_factory=list)


def usage_report(
    *,
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    group_by: Grouping,
    limit: int | None = 100,
    top: int = 8,
) -> UsageReport:
    """Usage in ``[start, end)`` of ``user_ids`` (``None``: everyone) for the usage page.

    The table holds at most ``limit`` rows (``None``: all): the dearest groups for users,
    agents and models, the earliest for days and hours. Days and hours are UTC.

    Each figure is grouped by the database by what it shows: the chart by time and model
    (``usage_grouped``: every bar is drawn, so every group is read; the totals, the models and
    a table by model, by the chart's time or by days of its hours are those groups added up);
    in one statement (``usage_listed``) the top users, the top agents and a table by user or by
    agent, each ordered and cut by the database; a table by hour over days in one more
    (``usage_hours``). Then two queries for names."""
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPINGS)}, not {group_by!r}")
    bucket: Literal["day", "hour"] = "hour" if end - start <= HOURLY_CHART_UP_TO else "day"
    by_time = usage_grouped(user_ids=user_ids, start=start, end=end, keys=(bucket, "model"))
    totals = zero()
    by_model: dict[Any, dict[str, Any]] = {}
    by_bucket: dict[Any, dict[str, Any]] = {}
    for (moment, model), sums in by_time.items():
        _add(totals, sums)
        _add(by_model.setdefault(model, zero()), sums)
        _add(by_bucket.setdefault(moment, zero()), sums)
    models = [model for model, _ in _dearest(by_model)]
    listings = [
        Listing(("user",), limit=top, counted=False),
        Listing(("user", "agent"), limit=top, agents_only=True, counted=False),
    ]
    if group_by in ("user", "agent"):
        listings.append(
            Listing(("user",) if group_by == "user" else ("user", "agent"), limit=limit)
        )
    top_users, top_agents, *table = usage_listed(
        user_ids=user_ids,
        start=start,
        end=end,
        listings=listings,
        amounts=AMOUNTS if len(listings) > 2 else ("cost_usd",),  # the top lists show cost
    )
    if group_by == "hour" and bucket == "day":
        table = [usage_hours(user_ids=user_ids, start=start, end=end, limit=limit)]
    if table:
        shown = [(key[0] if len(key) == 1 else key, sums) for key, sums in table[0].rows]
        groups = table[0].groups or 0
    else:
        if group_by == "model":
            ordered = _dearest(by_model)
        elif group_by == bucket:
            ordered = sorted(by_bucket.items(), key=lambda item: item[0])
        else:  # days of the chart's hours
            by_day: dict[Any, dict[str, Any]] = {}
            for moment, sums in by_bucket.items():
                _add(by_day.setdefault(moment.date(), zero()), sums)
            ordered = sorted(by_day.items(), key=lambda item: item[0])
        shown = ordered if limit is None else ordered[:limit]
        groups = len(ordered)
    user_keys = {key[0] for key, _ in top_users.rows} | {key[0] for key, _ in top_agents.rows}
    agent_keys = {key[1] for key, _ in top_agents.rows}
    if group_by == "user":
        user_keys |= {key for key, _ in shown}
    elif group_by == "agent":
        user_keys |= {key[0] for key, _ in shown}
        agent_keys |= {key[1] for key, _ in shown if key[1] is not None}
    names = _names(user_ids=user_keys, agent_ids=agent_keys)
    rows = [{"key": key, **_label(group_by, key, names), **finish(sums)} for key, sums in shown]
    return UsageReport(
        start=start,
        end=end,
        group_by=group_by,
        bucket=bucket,
        rows=rows,
        hidden=groups - len(shown),
        totals=finish(totals),
        models=models,
        buckets=_buckets(by_time, bucket, start, end, models),
        top_users=[
            Ranked(key[0], _label("user", key[0], names)["label"], sums["cost_usd"], key[0])
            for key, sums in top_users.rows
        ],
        top_agents=[
            Ranked(key[1], _label("agent", key, names)["label"], sums["cost_usd"], key[0])
            for key, sums in top_agents.rows
        ],
    )


def _add(into: dict[str, Any], sums: dict[str, Any]) -> None:
    for name in into:
        into[name] += sums[name]


def _dearest(groups: dict[Any, dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    return sorted(
        groups.items(),
        key=lambda item: (
            -item[1]["cost_usd"],
            -sum(item[1].get(kind, 0) for kind in TOKEN_KINDS),
            str(item[0]),
        ),
    )


@dataclass(frozen=True, slots=True)
class _Names:
    users: dict[int, str]
    agents: dict[str, str]


def _names(*, user_ids: set[int], agent_ids: set[str]) -> _Names:
    users = dict(User.objects.filter(pk__in=user_ids).values_list("pk", "username"))
    agents = {
        str(pk): name
        for pk, name in Agent.objects.filter(pk__in=agent_ids).values_list("pk", "name")
    }
    return _Names(users, agents)


def _label(group_by: str, key: Any, names: _Names) -> dict[str, str]:
    """The row's ``label``, a smaller line below it (``sub``) and, for an agent, its ``owner``."""
    if group_by == "user":
        return {"label": names.users.get(key, f"user {key}"), "sub": "", "owner": ""}
    if group_by == "agent":
        user_id, agent_id = key
        owner = names.users.get(user_id, f"user {user_id}")
        if agent_id is None:
            return {"label": "no agent (API)", "sub": owner, "owner": owner}
        name = names.agents.get(agent_id) or f"agent {agent_id[:8]}"
        return {"label": name, "sub": f"{owner} · {agent_id[:8]}", "owner": owner}
    if group_by == "hour":
        return {"label": f"{key:%Y-%m-%d %H:00}", "sub": "", "owner": ""}
    if group_by == "day":
        return {"label": f"{key:%Y-%m-%d}", "sub": "", "owner": ""}
    return {"label": str(key), "sub": "", "owner": ""}


def _buckets(
    by_time: dict[tuple[Any, ...], dict[str, Any]],
    bucket: str,
    start: datetime,
    end: datetime,
    models: list[str],
) -> list[Bucket]:
    costs: dict[Any, dict[str, Decimal]] = {}
    for (moment, model), sums in by_time.items():
        costs.setdefault(moment, {})[model] = sums["cost_usd"]
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    found = []
    if bucket == "hour":
        moment = start.replace(minute=0, second=0, microsecond=0)
        while moment < end:
            found.append(moment)
            moment += _HOUR
    else:
        day, last = start.date(), (end - timedelta(microseconds=1)).date()
        while day <= last:
            found.append(day)
            day += _DAY
    return [
        Bucket(moment, {model: costs.get(moment, {}).get(model, Decimal(0)) for model in models})
        for moment in found
    ]


# --- Budgets burning down ------------------------------------------------------------------------


def user_choices(*, chosen: int | None) -> list[tuple[str, str, bool]]:
    """Every user for the User filter, by name: its value, its name and whether it is the one
    ``chosen``; plain rows, one query."""
    users = User.objects.order_by("username").values_list("pk", "username")
    return [(str(pk), username, pk == chosen) for pk, username in users]


@dataclass(frozen=True, slots=True)
class Burndown:
    """A budget in its current window: spent so far, the recent rate of spend (per hour), and
    when the budget runs out at that rate (``None``: not before the window resets)."""

    budget_id: int
    user_id: int
    username: str
    metric: str
    window: str
    label: str
    limit: Decimal
    used: Decimal
    reserved: Decimal
    window_start: datetime
    window_end: datetime
    rate_per_hour: Decimal
    runs_out_at: datetime | None
    exhausted: bool

    @property
    def percent(self) -> float:
        if self.limit <= 0:
            return 100.0
        return float(min(Decimal(100), (self.used + self.reserved) * 100 / self.limit))


def budget_burndowns(
    *, user_ids: list[int] | None, now: datetime | None = None, recent: timedelta = _DAY
) -> list[Burndown]:
    """Each budget of ``user_ids`` (``None``: everyone's) in its current window, soonest to run
    out first. The rate is what was spent over the ``recent`` period (or, for a window younger
    than that, since it began) per hour; a budget runs out when its remaining amount is spent
    at that rate, if that is before its window ends (a rolling window never ends: it runs out
    when the rate over its whole length would exceed the limit)."""
    now = now or timezone.now()
    budgets = Budget.objects.select_related("user__quota").order_by("user_id", "pk")
    if user_ids is not None:
        budgets = budgets.filter(user_id__in=user_ids)
    budgets = list(budgets)
    if not budgets:
        return []
    zones = {
        b.user_id: quota.timezone
        for b in budgets
        if (quota := getattr(b.user, "quota", None)) is not None
    }
    windows = budget_windows(budgets=budgets, timezones=zones, now=now)
    spent = usage_grouped(
        user_ids=sorted({b.user_id for b in budgets}),
        start=now - recent,
        end=now,
        keys=("user",),
        amounts=(*TOKEN_KINDS, "cost_usd"),
    )
    found = []
    for budget in budgets:
        window = windows[budget.pk]
        sums = spent.get((budget.user_id,), zero((*TOKEN_KINDS, "cost_usd")))
        if budget.metric == Budget.Metric.USD:
            recent_spend = Decimal(sums["cost_usd"])
        else:
            recent_spend = Decimal(sum(sums[kind] for kind in TOKEN_KINDS))
        elapsed = now - window.start
        if budget.window != Budget.Window.ROLLING and elapsed < recent:
            hours = max(Decimal(elapsed.total_seconds()) / 3600, Decimal(1))
            rate = window.used / hours
        else:
            rate = recent_spend / Decimal(recent.total_seconds() / 3600)
        remaining = budget.limit - window.used - budget.reserved
        runs_out = None
        if remaining <= 0:
            runs_out = now
        elif rate > 0:
            at = now + timedelta(hours=float(remaining / rate))
            if budget.window == Budget.Window.ROLLING:
                if rate * (budget.rolling_hours or 1) >= budget.limit:
                    runs_out = at
            elif at < window.end:
                runs_out = at
        found.append(
            Burndown(
                budget_id=budget.pk,
                user_id=budget.user_id,
                username=budget.user.username,
                metric=budget.metric,
                window=budget.window,
                label=str(budget),
                limit=budget.limit,
                used=window.used,
                reserved=budget.reserved,
                window_start=window.start,
                window_end=window.end,
                rate_per_hour=rate,
                runs_out_at=runs_out,
                exhausted=remaining <= 0,
            )
        )
    far = datetime.max.replace(tzinfo=UTC)
    found.sort(key=lambda b: (b.runs_out_at or far, -b.percent, b.budget_id))
    return found


# --- Limits and refusals, for operators ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefusalCount:
    """Refusals over one limit in the period, and how many users they hit."""

    limit: str
    scope: str
    refused: int
    users: int


def refusals_by_limit(
    *, since: datetime | None = None, now: datetime | None = None
) -> tuple[list[RefusalCount], list[dict[str, Any]]]:
    """Refusals from ``since`` (default: 24 hours ago) on: per limit, most first; and per user
    and limit, most first (the top 20). Two queries."""
    now = now or timezone.now()
    since = since or now - _DAY
    rows = Refusal.objects.filter(minute__gte=since.replace(second=0, microsecond=0)).order_by()
    by_limit = [
        RefusalCount(row["limit"], row["scope"], row["refused"], row["users"])
        for row in rows.values("limit", "scope")
        .annotate(refused=Sum("count"), users=Count("user_id", distinct=True))
        .order_by("-refused", "limit", "scope")
    ]
    by_user = list(
        rows.values("user_id", "user__username", "limit", "scope")
        .annotate(refused=Sum("count"))
        .order_by("-refused", "user__username", "limit")[:20]
    )
    return by_limit, by_user


# --- Limits nearest to full -----------------------------------------------------------------------


_AGENT_LIMITS = (
    ("agents", "max_agents", "count"),
    ("vCPUs", "max_total_vcpus", "vcpus"),
    ("memory MiB", "max_total_memory_mib", "memory"),
    ("GPUs", "max_gpus", "gpus"),
)


def limits_nearest(*, count: int = 20, now: datetime | None = None) -> list[LimitStanding]:
    """The ``count`` limits nearest to full across every user with a quota: running agents,
    their vCPUs and memory, this minute's requests and tokens, calls in flight, and each budget
    used in its current window. Five queries (and one per distinct rolling budget length)."""
    if count <= 0:
        return []
    now = now or timezone.now()
    by_user = {quota.user_id: quota for quota in Quota.objects.select_related("user")}
    budgets = list(Budget.objects.filter(user_id__in=by_user))
    for budget in budgets:  # its owner as the quota loaded it: no query per budget
        budget.user = by_user[budget.user_id].user
    standings = _quota_limits_in_use(by_user, now=now)
    standings += budget_standings(budgets=budgets, quotas=dict(by_user), now=now, used_only=True)
    return nearest_full(standings, count=count)


def _quota_limits_in_use(by_user: dict[int, Quota], *, now: datetime) -> list[LimitStanding]:
    """The quotas' limits in use now (those set): agents, this minute's rates, calls in flight.
    Three queries."""
    found: list[tuple[Quota, str, Any, Any]] = []
    agents = (
        Agent.objects.filter(
            owner_id__in=by_user, status__in=Agent.ACTIVE_STATUSES, deleted_at__isnull=True
        )
        .order_by()
        .values("owner_id")
        .annotate(
            count=Count("id"),
            vcpus=Sum("vcpus"),
            memory=Sum("memory_mib"),
            gpus=Sum("gpu_count"),
        )
    )
    for row in agents:
        quota = by_user[row["owner_id"]]
        found += [
            (quota, label, row[column], getattr(quota, name))
            for label, name, column in _AGENT_LIMITS
        ]
    minute = now.replace(second=0, microsecond=0)
    rates = rates_in_minutes([minute], prefix="user:")[minute]
    for scope, (requests, tokens) in rates.items():
        if (limits := by_user.get(int(scope.removeprefix("user:")))) is not None:
            found.append((limits, "requests per minute", requests, limits.requests_per_minute))
            found.append((limits, "tokens per minute", tokens, limits.tokens_per_minute))
    for user_id, running in calls_in_flight(list(by_user), now).items():
        quota = by_user[user_id]
        found.append((quota, "concurrent requests", running, quota.concurrent_requests))
    return [
        limit_standing(quota, quota.user, limit, used, value)
        for quota, limit, used, value in found
        if value is not None and used
    ]
