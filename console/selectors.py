"""Reads over the usage ledger and budgets: summaries and totals for dashboards and reports,
and the budgets nearest their limits for monitoring; the fleet's counts for ``/metrics``; the
audit log, a page at a time.

Summaries read the roll-ups, kept current in the same transaction as each ledger row: whole
UTC days from the daily one (``UsageDaily``), whole hours around them from the hourly one
(``UsageHourly``), and the partial hours at the edges from the ledger itself (``UsageRecord``,
at most one hour of rows at each end), so the answer is exact for any range. How a range is cut
and which indexes serve each piece: ``console.ledger_reads``.

Ranges are half-open, ``start <= t < end``, with aware datetimes. On SQLite, sums of USD amounts
are computed in floating point by the database (and quantized to eight places when read);
PostgreSQL sums them exactly. An agent removed from the database (not merely marked deleted)
keeps its id in the roll-ups but loses it in the ledger, so its calls in the partial hours of a
range count under no agent.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from console.ledger_reads import TOKEN_KINDS, finish, usage_grouped, zero
from console.models import (
    ApiKey,
    AuditEvent,
    Budget,
    Quota,
    RateCounter,
    Reservation,
    UsageHourly,
    User,
)
from console.services import budget_window
from console.services.counters import redis_counters
from plumbing.errors import BadRequest, Forbidden

__all__ = [
    "AuditPage",
    "BudgetWindow",
    "GroupBy",
    "LimitStanding",
    "api_key_list",
    "audit_events",
    "budget_list",
    "budget_standings",
    "budget_windows",
    "budgets_nearest",
    "calls_in_flight",
    "limit_standing",
    "nearest_full",
    "quota_list",
    "rates_in_minutes",
    "usage_readable_user_ids",
    "usage_summary",
    "usage_totals",
]

GroupBy = Literal["user", "agent", "model", "day", "hour"]

_KEY_NAME = {"user": "user_id", "agent": "agent_id", "model": "model", "day": "day", "hour": "hour"}


def usage_readable_user_ids(
    *, viewer: User, operator: bool, user_id: int | None = None
) -> list[int] | None:
    """Whose usage ``viewer`` reads when asking for ``user_id``'s (None: the default): their
    own; an ``operator``, that user's or everyone's (None). Another user's, for anyone else, is
    ``Forbidden``."""
    if operator:
        return [user_id] if user_id is not None else None
    if user_id is not None and user_id != viewer.pk:
        raise Forbidden(
            "only operators may read another user's usage", details={"user_id": user_id}
        )
    return [viewer.pk]


def usage_summary(
    *,
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    group_by: GroupBy,
    tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Usage in ``[start, end)`` grouped by ``group_by``, for ``user_ids`` (``None``: everyone).

    Each row holds its key (``user_id``; ``agent_id``, a string or ``None`` for calls made
    without an agent; ``model``; ``day``, a date in ``tz``; or ``hour``, an aware UTC datetime),
    then ``requests``, the four token kinds, ``total_tokens`` and ``cost_usd`` (a ``Decimal``).
    Users, agents and models come dearest first; days and hours in time order. Only groups with
    usage appear. Days in ``tz`` are exact for zones whose offset from UTC is a whole number of
    hours; in the others (a few, such as Asia/Kolkata) each hour counts in the day it began in.

    Takes one query over each roll-up the range needs plus one per partial hour at its edges.
    """
    if group_by not in _KEY_NAME:
        raise ValueError(f"group_by must be one of {', '.join(_KEY_NAME)}, not {group_by!r}")
    zoneinfo.ZoneInfo(tz)  # an unknown zone fails here, even for a range with no usage
    totals = usage_grouped(user_ids=user_ids, start=start, end=end, keys=(group_by,), tz=tz)
    rows = [{_KEY_NAME[group_by]: key, **finish(values)} for (key,), values in totals.items()]
    if group_by in ("day", "hour"):
        rows.sort(key=lambda row: row[_KEY_NAME[group_by]])
    else:
        name = _KEY_NAME[group_by]
        rows.sort(key=lambda row: (-row["cost_usd"], -row["total_tokens"], str(row[name])))
    return rows


def usage_totals(*, user_ids: list[int] | None, start: datetime, end: datetime) -> dict[str, Any]:
    """Usage in ``[start, end)`` for ``user_ids`` (``None``: everyone), in one row: ``requests``,
    the four token kinds, ``total_tokens`` and ``cost_usd``; exact as ``usage_summary`` is."""
    found = usage_grouped(user_ids=user_ids, start=start, end=end, keys=())
    return finish(found.get((), zero()))


# --- Lists for the API --------------------------------------------------------------------------


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    """The user's own API keys, revoked ones too."""
    return ApiKey.objects.filter(user=user)


def quota_list() -> QuerySet[Quota]:
    """Every quota with its user and the user's budgets, for operators."""
    return Quota.objects.select_related("user").prefetch_related("user__budgets")


def budget_list(*, user_id: int | None = None) -> QuerySet[Budget]:
    """Budgets (of one user, or everyone's) with the owner's time zone, for operators."""
    budgets = Budget.objects.select_related("user__quota")
    return budgets if user_id is None else budgets.filter(user_id=user_id)


# --- Arithmetic ----------------------------------------------------------------------------------


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


# --- Budgets -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitStanding:
    """How much of one limit of one user is in use now; a budget's use counts what settled in
    its current window and what calls in flight reserved."""

    user_id: int
    username: str
    quota_id: int | None
    limit: str
    used: Decimal
    value: Decimal
    budget_id: int | None = None
    metric: str = ""
    window: str = ""

    @property
    def remaining(self) -> Decimal:
        """What new calls may still use (negative when an operator lowered the limit)."""
        return self.value - self.used

    @property
    def percent(self) -> float:
        if self.value <= 0:
            return 100.0
        return float(self.used * 100 / self.value)

    @property
    def used_text(self) -> str:
        return _plain(self.used)

    @property
    def value_text(self) -> str:
        return _plain(self.value)

    @property
    def _share_used(self) -> Decimal:
        return self.used / self.value if self.value > 0 else Decimal(1)


def _plain(value: Decimal) -> str:
    """1234 → 1,234; 12.5000 → 12.5 (never 4E+1)."""
    if value == value.to_integral_value():
        return f"{int(value):,}"
    return f"{value.normalize():,f}"


def budgets_nearest(*, count: int, now: datetime | None = None) -> list[LimitStanding]:
    """The ``count`` budgets nearest their limits, used or not, each in its current window as
    admission sees it (what ``/metrics`` exports): one query, and one more per distinct rolling
    budget length."""
    if count <= 0:
        return []
    budgets = list(
        Budget.objects.select_related("user__quota").only(
            *Budget.LIMIT_FIELDS, *Budget.COUNTER_FIELDS, "user__username", "user__quota__timezone"
        )
    )
    quotas = {budget.user_id: getattr(budget.user, "quota", None) for budget in budgets}
    standings = budget_standings(budgets=budgets, quotas=quotas, now=now, used_only=False)
    return nearest_full(standings, count=count)


def budget_standings(
    *,
    budgets: list[Budget],
    quotas: dict[int, Quota | None],
    now: datetime | None = None,
    used_only: bool,
) -> list[LimitStanding]:
    """Where each of ``budgets`` stands in its current window (those used so far only, with
    ``used_only``); ``quotas`` maps each owner's id to their quota, for its time zone."""
    now = now or timezone.now()
    zones = {user_id: quota.timezone for user_id, quota in quotas.items() if quota}
    windows = budget_windows(budgets=budgets, timezones=zones, now=now)
    standings = []
    for budget in budgets:
        used = windows[budget.pk].used + budget.reserved
        if used or not used_only:
            quota = quotas[budget.user_id]
            standings.append(
                limit_standing(quota, budget.user, f"budget {budget}", used, budget.limit, budget)
            )
    return standings


def nearest_full(standings: list[LimitStanding], *, count: int) -> list[LimitStanding]:
    """The ``count`` standings nearest to full (ties: by user name, limit, then budget)."""
    standings = sorted(
        standings, key=lambda s: (-s._share_used, s.username, s.limit, s.budget_id or 0)
    )
    return standings[:count]


def limit_standing(
    quota: Quota | None, user: User, limit: str, used: Any, value: Any, budget: Budget | None = None
) -> LimitStanding:
    return LimitStanding(
        user.pk,
        user.username,
        quota.pk if quota else None,
        limit,
        Decimal(used),
        Decimal(value),
        budget.pk if budget else None,
        budget.metric if budget else "",
        budget.window if budget else "",
    )


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    """Where a budget stands in its current window, as admission sees it."""

    start: datetime
    end: datetime
    used: Decimal


def budget_windows(
    *, budgets: list[Budget], timezones: dict[int, str], now: datetime | None = None
) -> dict[int, BudgetWindow]:
    """Budget id → its current window and what it used there, for ``budgets`` whose owners'
    time zones ``timezones`` maps by user id (missing: UTC). A calendar window that has ended
    counts as unused; a rolling one sums the roll-up, one query per distinct rolling length."""
    now = now or timezone.now()
    rolling = _rolling_used([b for b in budgets if b.window == Budget.Window.ROLLING], now=now)
    found = {}
    for budget in budgets:
        start, end = budget_window(budget, timezones.get(budget.user_id, "UTC"), now)
        if budget.window == Budget.Window.ROLLING:
            used = rolling[budget.pk]
        else:
            used = budget.used if budget.window_started_at >= start else Decimal(0)
        found[budget.pk] = BudgetWindow(start, end, used)
    return found


def _rolling_used(budgets: list[Budget], *, now: datetime) -> dict[int, Decimal]:
    """What each rolling budget's window used so far, from the roll-up, as admission counts it."""
    used: dict[int, Decimal] = {}
    by_length: dict[int, list[Budget]] = {}
    for budget in budgets:
        by_length.setdefault(budget.rolling_hours or 1, []).append(budget)
    for hours, group in by_length.items():
        start = _floor_hour(now) - timedelta(hours=hours - 1)
        sums = {
            row.pop("user_id"): row
            for row in UsageHourly.objects.filter(
                user_id__in={b.user_id for b in group}, hour__gte=start
            )
            .order_by()
            .values("user_id")
            .annotate(cost=Sum("cost_usd"), **{kind: Sum(kind) for kind in TOKEN_KINDS})
        }
        for budget in group:
            row = sums.get(budget.user_id)
            if row is None:
                used[budget.pk] = Decimal(0)
            elif budget.metric == Budget.Metric.USD:
                used[budget.pk] = row["cost"] or Decimal(0)
            else:
                used[budget.pk] = Decimal(sum(row[kind] or 0 for kind in TOKEN_KINDS))
    return used


# --- The audit log -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of audit events, newest first, and the cursor of the next page (None: the last)."""

    events: list[AuditEvent]
    next_cursor: str | None


def audit_events(
    *,
    actor: User | int | None = None,
    action: str | None = None,
    target_type: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    page_size: int = 50,
) -> AuditPage:
    """The audit log, newest first, filtered by who acted, what they did (an ``action`` ending
    in ``.`` is a prefix: ``"budget."`` is every budget action), the kind of row they did it to
    (``"console.quota"``) and how recently; ``page_size`` events (at most 500) after ``cursor``.

    The cursor is the last event's ``at`` and id, so a page never repeats or skips events
    written meanwhile; a malformed cursor raises ``BadRequest``. One query per page (the actor
    comes with each event), served by the ``at`` index.
    """
    page_size = max(1, min(page_size, 500))
    events = AuditEvent.objects.select_related("actor").only(
        "action",
        "target_type",
        "target_id",
        "target_repr",
        "changes",
        "at",
        "actor__id",
        "actor__username",
    )
    if actor is not None:
        events = events.filter(actor_id=actor.pk if isinstance(actor, User) else actor)
    if action:
        events = (
            events.filter(action__startswith=action)
            if action.endswith(".")
            else events.filter(action=action)
        )
    if target_type:
        events = events.filter(target_type=target_type)
    if since is not None:
        events = events.filter(at__gte=since)
    if cursor:
        at_text, _, pk_text = cursor.rpartition("~")
        try:
            at, pk = datetime.fromisoformat(at_text), int(pk_text)
        except ValueError:
            raise BadRequest("the cursor is malformed", details={"cursor": cursor}) from None
        events = events.filter(Q(at__lt=at) | Q(at=at, pk__lt=pk))
    found = list(events.order_by("-at", "-pk")[: page_size + 1])
    more = len(found) > page_size
    found = found[:page_size]
    last = found[-1] if found else None
    next_cursor = f"{last.at.isoformat()}~{last.pk}" if more and last is not None else None
    return AuditPage(found, next_cursor)


# --- The hot counters ----------------------------------------------------------------------------


def rates_in_minutes(
    minutes: list[datetime], *, prefix: str = ""
) -> dict[datetime, dict[str, tuple[int, int]]]:
    """The requests and tokens each scope (whose name starts with ``prefix``) has counted in
    each of ``minutes``, wherever the counters live; one query (or Redis command) a minute at
    most."""
    store = redis_counters()
    found: dict[datetime, dict[str, tuple[int, int]]] = {minute: {} for minute in minutes}
    if store is not None:
        for minute in minutes:
            counts = store.minute(minute)
            found[minute] = {s: c for s, c in counts.items() if s.startswith(prefix)}
        return found
    rows = RateCounter.objects.filter(minute__in=minutes, scope__startswith=prefix)
    for minute, scope, requests, tokens in rows.values_list(
        "minute", "scope", "requests", "tokens"
    ):
        found[minute][scope] = (requests, tokens)
    return found


def calls_in_flight(user_ids: list[int], now: datetime) -> dict[int, int]:
    """Each user's gateway calls in flight (those counting toward the concurrency limits)."""
    store = redis_counters()
    if store is not None:
        found = store.in_flight([f"user:{pk}" for pk in user_ids], now)
        return {int(scope.removeprefix("user:")): n for scope, n in found.items()}
    rows = (
        Reservation.objects.filter(user_id__in=user_ids, expires_at__gt=now)
        .order_by()
        .values_list("user_id")
        .annotate(n=Count("id"))
    )
    return dict(rows)
