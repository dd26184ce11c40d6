"""Budgets and rate limits, enforced exactly across every process.

Every check and every change for one user happens in one transaction that holds the user's
quota row locked (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's write transactions are
serialized anyway), so concurrent requests, in any number of processes, are admitted one at a
time against the same counters: nothing is read-then-written unlocked.

A gateway call is admitted with its worst case: the request body's size in bytes bounds its input
tokens (a text token is at least one byte), priced at the dearest input rate, plus ``max_tokens``
at the output rate. That worst case is reserved against each budget and the token rate until the
call settles to Anthropic's reported usage, so spend never exceeds a budget, even when many calls
are in flight at once.
"""

from __future__ import annotations

import calendar
import math
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from console.errors import BudgetExceeded, QuotaExceeded, RateLimited, UserSuspended
from console.models import ApiKey, Budget, Quota, RateCounter, Reservation, UsageHourly, UsageRecord
from console.services.ledger import TokenUsage, cost_of, price_for, usage_record

__all__ = [
    "Admission",
    "RateStatus",
    "WorstCase",
    "budget_window",
    "gateway_admit",
    "gateway_settle",
    "request_admit",
    "reservations_release_expired",
    "worst_case",
]

_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class RateStatus:
    """The request-rate limit that binds a caller now, for the X-RateLimit-* headers."""

    limit: int
    remaining: int
    resets_at: datetime

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(math.ceil(self.resets_at.timestamp())),
        }


@dataclass(frozen=True, slots=True)
class WorstCase:
    """The most a call can cost: tokens and USD."""

    tokens: int
    usd: Decimal


@dataclass(slots=True)
class Admission:
    """An admitted gateway call: its reservation, settled (or released) when it ends."""

    reservation_id: uuid.UUID
    user_id: int
    api_key_id: int | None
    rate: RateStatus | None = None
    settled: bool = False


def worst_case(*, model: str, body_bytes: int, max_tokens: int) -> WorstCase:
    """The most a call can use and cost (see the module's docstring)."""
    price = price_for(model=model, at=timezone.now())
    tokens = body_bytes + max_tokens
    if price is None:
        return WorstCase(tokens, Decimal(0))
    dearest_input = max(price.input_per_mtok, price.cache_write_per_mtok)
    usd = (body_bytes * dearest_input + max_tokens * price.output_per_mtok) / Decimal(1_000_000)
    return WorstCase(tokens, usd.quantize(Decimal("0.00000001")))


# --- Windows -----------------------------------------------------------------------------------


def budget_window(budget: Budget, tz_name: str, now: datetime) -> tuple[datetime, datetime]:
    """The budget's current window: (start, end) as aware datetimes.

    Calendar days and months begin at local midnight in the quota's time zone; a rolling window
    of N hours is the current clock hour and the N-1 before it.
    """
    if budget.window == Budget.Window.ROLLING:
        hour = now.replace(minute=0, second=0, microsecond=0)
        return hour - timedelta(hours=(budget.rolling_hours or 1) - 1), hour + timedelta(hours=1)
    tz = zoneinfo.ZoneInfo(tz_name)
    today = now.astimezone(tz).date()
    if budget.window == Budget.Window.DAY:
        first, after = today, today + timedelta(days=1)
    else:
        first = today.replace(day=1)
        after = first + timedelta(days=calendar.monthrange(first.year, first.month)[1])
    return datetime.combine(first, time(0), tz), datetime.combine(after, time(0), tz)


def _rolling_used(budget: Budget, start: datetime) -> Decimal:
    column = "cost_usd" if budget.metric == Budget.Metric.USD else None
    rows = UsageHourly.objects.filter(user_id=budget.user_id, hour__gte=start)
    if column:
        return rows.aggregate(total=Sum(column))["total"] or Decimal(0)
    totals = rows.aggregate(
        i=Sum("input_tokens"),
        o=Sum("output_tokens"),
        w=Sum("cache_creation_input_tokens"),
        r=Sum("cache_read_input_tokens"),
    )
    return Decimal(sum(value or 0 for value in totals.values()))


@dataclass
class _Window:
    budget: Budget
    start: datetime
    end: datetime
    used: Decimal


def _windows(quota: Quota, now: datetime) -> list[_Window]:
    """The user's budgets in their current windows; a calendar window that has ended starts
    afresh here (in-flight reservations carry over: they are still owed)."""
    found = []
    for budget in Budget.objects.filter(user_id=quota.user_id):
        start, end = budget_window(budget, quota.timezone, now)
        if budget.window == Budget.Window.ROLLING:
            used = _rolling_used(budget, start)
        else:
            if budget.window_started_at < start:
                Budget.objects.filter(pk=budget.pk).update(used=0, window_started_at=start)
                budget.used, budget.window_started_at = Decimal(0), start
            used = budget.used
        found.append(_Window(budget, start, end, used))
    return found


def _amount(budget: Budget, tokens: int, usd: Decimal) -> Decimal:
    return usd if budget.metric == Budget.Metric.USD else Decimal(tokens)


# --- Admission ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scope:
    name: str  # "user" or "API key"
    key: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    concurrent_requests: int | None


def _scopes(quota: Quota, api_key: ApiKey | None) -> list[_Scope]:
    scopes = [
        _Scope(
            "user",
            f"user:{quota.user_id}",
            quota.requests_per_minute,
            quota.tokens_per_minute,
            quota.concurrent_requests,
        )
    ]
    limits = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")
    if api_key is not None and any(getattr(api_key, name) is not None for name in limits):
        scopes.append(
            _Scope(
                "API key",
                f"key:{api_key.pk}",
                api_key.requests_per_minute,
                api_key.tokens_per_minute,
                api_key.concurrent_requests,
            )
        )
    return scopes


def _bump(scope: str, minute: datetime, tokens: int) -> tuple[int, int]:
    """Count a request (and ``tokens``) in the scope's minute: one statement, either backend.
    Returns the minute's totals including it."""
    table = connection.ops.quote_name(RateCounter._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (scope, minute, requests, tokens) VALUES (%s, %s, 1, %s) "
            "ON CONFLICT (scope, minute) DO UPDATE SET "
            f"requests = {table}.requests + 1, tokens = {table}.tokens + excluded.tokens "
            "RETURNING requests, tokens",
            [scope, connection.ops.adapt_datetimefield_value(minute), tokens],
        )
        requests, total_tokens = cursor.fetchone()
    return int(requests), int(total_tokens)


def _refuse_rate(scope: _Scope, what: str, limit: int, used: int, resets_at: datetime) -> None:
    now = timezone.now()
    refusal = RateLimited(
        f"{scope.name} limit reached: {limit} {what} ({used} used); it resets at "
        f"{resets_at:%H:%M:%S} UTC",
        details=_limit_details(f"{what.replace(' ', '_')}", scope.name, limit, used, resets_at),
        retry_after=max(1, math.ceil((resets_at - now).total_seconds())),
    )
    if what == "requests per minute":
        refusal.extra_headers = RateStatus(limit, 0, resets_at).headers()
    raise refusal


def _number(value: object) -> str:
    # A stored decimal keeps its 8 places ("5.00000000", "0E-8"): say 5 and 0.
    return f"{value.normalize():f}" if isinstance(value, Decimal) else str(value)


def _limit_details(
    limit: str, scope: str, value: object, used: object, resets_at: datetime | None
) -> dict[str, Any]:
    return {
        "limit": limit,
        "scope": scope,
        "value": _number(value),
        "used": _number(used),
        "resets_at": resets_at.isoformat() if resets_at else None,
    }


def _lock(user_id: int, *, refuse_suspended: bool = True) -> Quota:
    quota = Quota.objects.select_for_update().filter(user_id=user_id).first()
    if quota is None:
        Quota.objects.get_or_create(user_id=user_id)
        quota = Quota.objects.select_for_update().get(user_id=user_id)
    if refuse_suspended and quota.is_suspended:
        raise UserSuspended("this account is suspended; ask an operator")
    return quota


def _rate_status(
    scopes: list[_Scope], counters: list[RateCounter], resets_at: datetime
) -> RateStatus | None:
    """The tightest request rate after this request, for the headers."""
    limited = [
        RateStatus(rpm, rpm - counter.requests, resets_at)
        for scope, counter in zip(scopes, counters, strict=True)
        if (rpm := scope.requests_per_minute) is not None
    ]
    return min(limited, key=lambda status: status.remaining, default=None)


def _count_request(
    scopes: list[_Scope], now: datetime, tokens: int = 0
) -> tuple[list[RateCounter], datetime]:
    """Count one request (and ``tokens``) against each scope's minute; over a limit, refuse
    (the caller's transaction then takes the count back)."""
    minute = now.replace(second=0, microsecond=0)
    resets_at = minute + _MINUTE
    counters = []
    for scope in scopes:
        requests, total = _bump(scope.key, minute, tokens)
        rpm, tpm = scope.requests_per_minute, scope.tokens_per_minute
        if rpm is not None and requests > rpm:
            _refuse_rate(scope, "requests per minute", rpm, requests - 1, resets_at)
        if tokens and tpm is not None and total > tpm:
            _refuse_rate(scope, "tokens per minute", tpm, total - tokens, resets_at)
        counters.append(
            RateCounter(scope=scope.key, minute=minute, requests=requests, tokens=total)
        )
    return counters, resets_at


def _rate_now(scopes: list[_Scope], now: datetime) -> RateStatus | None:
    """The tightest request rate as it stands, without counting a request."""
    minute = now.replace(second=0, microsecond=0)
    counters = [
        RateCounter.objects.filter(scope=scope.key, minute=minute).first()
        or RateCounter(scope=scope.key, minute=minute)
        for scope in scopes
    ]
    return _rate_status(scopes, counters, minute + _MINUTE)


def _api_key(api_key: ApiKey | None, api_key_id: int | None) -> ApiKey | None:
    if api_key is not None or not api_key_id:
        return api_key
    return ApiKey.objects.filter(pk=api_key_id).first()


def request_admit(
    *,
    user_id: int,
    api_key_id: int | None = None,
    api_key: ApiKey | None = None,
    quota: Quota | None = None,
) -> RateStatus | None:
    """Count one API request against the caller's request rate; ``RateLimited`` when over.
    The caller's key and quota may be given as authentication already loaded them.

    No lock is needed: each minute's counter is one row, counted up by one statement that
    holds that row until commit, and taken back by the rollback when it went over."""
    now = timezone.now()
    if quota is None:
        quota, _ = Quota.objects.get_or_create(user_id=user_id)
    if quota.is_suspended:
        raise UserSuspended("this account is suspended; ask an operator")
    with transaction.atomic():
        api_key = _api_key(api_key, api_key_id)
        scopes = _scopes(quota, api_key)
        counters, resets_at = _count_request(scopes, now)
    return _rate_status(scopes, counters, resets_at)


def _check_concurrency(
    scopes: list[_Scope], user_id: int, api_key: ApiKey | None, now: datetime
) -> None:
    """Refuse when the calls in flight (unexpired reservations) already fill a scope's limit."""
    if all(scope.concurrent_requests is None for scope in scopes):
        return
    key_id = api_key.pk if api_key is not None else None
    running = Reservation.objects.filter(user_id=user_id, expires_at__gt=now).aggregate(
        user=Count("pk"), key=Count("pk", filter=Q(api_key_id=key_id))
    )
    for scope in scopes:
        limit = scope.concurrent_requests
        used = running["key" if scope.name == "API key" else "user"]
        if limit is not None and used + 1 > limit:
            raise RateLimited(
                f"{scope.name} limit reached: {limit} concurrent requests ({used} in flight)",
                details=_limit_details("concurrent_requests", scope.name, limit, used, None),
                retry_after=1,
            )


def gateway_admit(
    *,
    user_id: int,
    model: str,
    body_bytes: int,
    max_tokens: int,
    api_key_id: int | None = None,
    api_key: ApiKey | None = None,
) -> Admission:
    """Admit one gateway call, reserving its worst case; raises ``RateLimited`` or
    ``BudgetExceeded`` (which say which limit, its value, what is used and when it resets)."""
    worst = worst_case(model=model, body_bytes=body_bytes, max_tokens=max_tokens)
    now = timezone.now()
    with transaction.atomic():
        quota = _lock(user_id)
        api_key = _api_key(api_key, api_key_id)
        scopes = _scopes(quota, api_key)
        try:
            windows = _windows(quota, now)
            for window in windows:
                budget, cost = window.budget, _amount(window.budget, worst.tokens, worst.usd)
                if window.used + budget.reserved + cost > budget.limit:
                    _refuse_budget(window, cost, now)
            _check_concurrency(scopes, user_id, api_key, now)
            with transaction.atomic():  # a refusal takes its count back before the headers
                counters, resets_at = _count_request(scopes, now, worst.tokens)
        except QuotaExceeded as refusal:
            # The refused call is not counted, but its caller is known: like every answer to a
            # known caller, the refusal says where their request rate stands.
            if "X-RateLimit-Limit" not in refusal.extra_headers:
                rate = _rate_now(scopes, now)
                refusal.extra_headers |= rate.headers() if rate is not None else {}
            raise
        amounts = {}
        for window in windows:
            amount = _amount(window.budget, worst.tokens, worst.usd)
            Budget.objects.filter(pk=window.budget.pk).update(reserved=F("reserved") + amount)
            amounts[str(window.budget.pk)] = str(amount)
        reservation = Reservation.objects.create(
            user_id=user_id,
            api_key=api_key,
            amounts=amounts,
            tokens=worst.tokens,
            minute=resets_at - _MINUTE,
            expires_at=now + timedelta(seconds=settings.GATEWAY_RESERVATION_SECONDS),
        )
    return Admission(
        reservation.pk,
        user_id,
        api_key.pk if api_key is not None else None,
        _rate_status(scopes, counters, resets_at),
    )


def _refuse_budget(window: _Window, cost: Decimal, now: datetime) -> None:
    budget = window.budget
    unit = "USD" if budget.metric == Budget.Metric.USD else "tokens"
    spent = window.used + budget.reserved
    refusal = BudgetExceeded(
        f"{budget} budget would be exceeded: {spent.normalize():f} of "
        f"{budget.limit.normalize():f} {unit} used or in flight, this call may need "
        f"{cost.normalize():f}; it resets at {window.end.isoformat()}",
        details=_limit_details(
            f"{budget.metric}_per_{budget.window}", "user", budget.limit, spent, window.end
        )
        | {"budget_id": budget.pk, "requested": _number(cost)},
        retry_after=max(1, math.ceil((window.end - now).total_seconds())),
    )
    # Anthropic's SDKs sleep through any Retry-After before retrying, hours or days here, and
    # nothing changes before the window resets: tell them not to retry.
    refusal.extra_headers = {"x-should-retry": "false"}
    raise refusal


# --- Settlement --------------------------------------------------------------------------------


def gateway_settle(
    *,
    admission: Admission,
    model: str,
    usage: TokenUsage,
    agent_id: object | None = None,
    session_id: object | None = None,
    request_id: str = "",
) -> UsageRecord | None:
    """Replace the call's reservation by what it really used: the ledger row, each budget's
    spend, the token rate. Runs once per admission; a call that used nothing writes no row."""
    if admission.settled:
        return None
    admission.settled = True
    now = timezone.now()
    cost = cost_of(usage=usage, price=price_for(model=model, at=now))
    with transaction.atomic():
        quota = Quota.objects.select_for_update().get(user_id=admission.user_id)
        reservation = Reservation.objects.filter(pk=admission.reservation_id).first()
        _settle_budgets(_windows(quota, now), reservation, usage.total, cost)
        if reservation is not None:
            reservation.delete()
        if reservation is not None and usage.total != reservation.tokens:
            RateCounter.objects.filter(
                scope__in=_scope_keys(reservation), minute=reservation.minute
            ).update(tokens=F("tokens") - reservation.tokens + usage.total)
        if usage.total == 0:
            return None
        return usage_record(
            user_id=admission.user_id,
            model=model,
            usage=usage,
            agent_id=agent_id,
            session_id=session_id,
            request_id=request_id,
            at=now,
        )


def _scope_keys(reservation: Reservation) -> list[str]:
    keys = [f"user:{reservation.user_id}"]
    if reservation.api_key_id:
        keys.append(f"key:{reservation.api_key_id}")
    return keys


def _settle_budgets(
    windows: list[_Window], reservation: Reservation | None, tokens: int, cost: Decimal
) -> None:
    """Give back what the reservation held on each budget and add what was spent (rolling
    windows read their spend from the roll-ups instead); call with the user's row locked."""
    held = reservation.amounts if reservation is not None else {}
    for window in windows:
        budget = window.budget
        back = Decimal(held.get(str(budget.pk), 0))
        spent = Decimal(0)
        if budget.window != Budget.Window.ROLLING:
            spent = _amount(budget, tokens, cost)
        if back or spent:
            budget.reserved = max(Decimal(0), budget.reserved - back)
            Budget.objects.filter(pk=budget.pk).update(
                reserved=budget.reserved, used=F("used") + spent
            )


def reservations_release_expired(*, now: datetime | None = None) -> int:
    """Release reservations whose call never settled (its process died), and forget old
    rate counters. Beat runs it every minute."""
    now = now or timezone.now()
    released = 0
    expired_users = set(
        Reservation.objects.filter(expires_at__lte=now).values_list("user_id", flat=True)
    )
    for user_id in expired_users:
        with transaction.atomic():
            quota = _lock(user_id, refuse_suspended=False)
            windows = _windows(quota, now)
            for reservation in Reservation.objects.filter(user_id=user_id, expires_at__lte=now):
                _settle_budgets(windows, reservation, 0, Decimal(0))
                reservation.delete()
                released += 1
    RateCounter.objects.filter(minute__lt=now - timedelta(hours=1)).delete()
    return released
