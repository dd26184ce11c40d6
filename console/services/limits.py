"""Budgets and rate limits, enforced exactly across every process.

Every check and every change for one user happens in one transaction that holds the user's
quota row locked (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's write transactions are
serialized anyway), so concurrent requests, in any number of processes, are admitted one at a
time against the same counters: nothing is read-then-written unlocked.

A gateway call is admitted with its worst case: the request body's size in bytes bounds its input
tokens (a text token is at least one byte), plus what the body holds that Anthropic adds to
(``InputBounds``: its tool prompts, an allowance per image), priced at the dearest input rate,
plus ``max_tokens`` at the output rate, plus the web searches it may make. What the body cannot
bound (a file or URL source, a server tool, a very long tool list) is reserved at the operator's
``GATEWAY_UNBOUNDED_INPUT_TOKENS``, or refused under a budget when there is none. That worst case
is reserved against each budget and the token rate until the call settles to Anthropic's
reported usage, so spend never exceeds a budget, even when many calls are in flight at once
(as long as the caps hold: a call that uses more is still charged in full).

With ``REDIS_URL`` set, the per-minute request and token counts and the calls in flight are
counted in Redis instead, each check and count in one atomic script (``counters.py``): an API
request then writes nothing to the database. Budgets stay here, under the row lock. Redis
unreachable, every request and call is refused with ``ServiceUnavailable`` (503): none is let
through uncounted.

Admission and settlement run on every gateway call, so their statements are SQL, in
``ledger_sql.py`` (the ORM spent ~3.5 ms of a call's 3.7 ms compiling querysets); the rest of
this module is the rules, and reads no row twice.
"""

from __future__ import annotations

import calendar
import logging
import math
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from time import monotonic, sleep
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from console.models import ApiKey, Budget, ModelPrice, Quota, RateCounter, Reservation, UsageRecord
from console.services import ledger_sql
from console.services.call_bounds import (
    InputBounds,
    UnboundedCall,
    WorstCase,
    model_price,
    worst_case,
)
from console.services.counters import Counted, Limits, RedisCounters, redis_counters
from console.services.ledger import (
    TokenUsage,
    cost_of,
    ledger_spool,
    ledger_spooled,
    price_for,
    usage_record,
)
from plumbing.errors import (
    BudgetExceeded,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    UserSuspended,
)

__all__ = [
    "Admission",
    "RateStatus",
    "budget_window",
    "gateway_admit",
    "gateway_settle",
    "request_admit",
    "reservations_release_expired",
    "settlements_replay",
]

_MINUTE = timedelta(minutes=1)
# Settling a call is retried this many times over a database error, waiting between tries.
_SETTLE_TRIES = 5
_SETTLE_BACKOFF = 0.2

log = logging.getLogger("console.gateway")


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


@dataclass(slots=True)
class Admission:
    """An admitted gateway call: its reservation, settled (or released) when it ends, the
    (priced) model it asked for, and its worst case."""

    reservation_id: uuid.UUID
    user_id: int
    api_key_id: int | None
    rate: RateStatus | None = None
    settled: bool = False
    model: str = ""
    worst: WorstCase | None = None


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


@dataclass(frozen=True, slots=True)
class _Window:
    budget: Budget
    start: datetime
    end: datetime


def _windows(quota: Quota, now: datetime) -> list[_Window]:
    """The user's budgets in their current windows; a calendar window that has ended starts
    afresh here (in-flight reservations carry over: they are still owed)."""
    found = []
    for budget in ledger_sql.budgets_of(quota.user_id):
        start, end = budget_window(budget, quota.timezone, now)
        if budget.window != Budget.Window.ROLLING and budget.window_started_at < start:
            ledger_sql.budget_restart(budget.pk, start)
            budget.used, budget.window_started_at = Decimal(0), start
        found.append(_Window(budget, start, end))
    return found


def _used(window: _Window) -> Decimal:
    """What the budget's window has spent: its running total, or for a rolling window, the
    hourly roll-ups of its hours."""
    budget = window.budget
    if budget.window != Budget.Window.ROLLING:
        return budget.used
    usd = budget.metric == Budget.Metric.USD
    return ledger_sql.hourly_spend(budget.user_id, window.start, usd=usd)


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


def _refuse_rate(
    scope: _Scope,
    what: str,
    limit: int,
    used: int,
    resets_at: datetime,
    rate: RateStatus | None = None,
) -> None:
    """Refuse over a rate limit; the headers say where the request rate stands: at the limit,
    or (over the token rate) ``rate``."""
    now = timezone.now()
    refusal = RateLimited(
        f"{scope.name} limit reached: {limit} {what} ({used} used); it resets at "
        f"{resets_at:%H:%M:%S} UTC",
        details=_limit_details(f"{what.replace(' ', '_')}", scope.name, limit, used, resets_at),
        retry_after=max(1, math.ceil((resets_at - now).total_seconds())),
    )
    if what == "requests per minute":
        refusal.extra_headers = RateStatus(limit, 0, resets_at).headers()
    elif rate is not None:
        refusal.extra_headers = rate.headers()
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
    """The user's quota row, locked until the transaction ends (created on first use)."""
    quota = ledger_sql.quota_lock(user_id)
    if quota is None:
        Quota.objects.get_or_create(user_id=user_id)
        quota = ledger_sql.quota_lock(user_id)
        assert quota is not None  # just created, and it cannot go while the transaction runs
    if refuse_suspended and quota.is_suspended:
        raise UserSuspended("this account is suspended; ask an operator")
    return quota


def _rate_status(
    scopes: list[_Scope], requests: list[int], resets_at: datetime
) -> RateStatus | None:
    """The tightest request rate, given each scope's requests in the minute, for the headers."""
    limited = [
        RateStatus(rpm, rpm - count, resets_at)
        for scope, count in zip(scopes, requests, strict=True)
        if (rpm := scope.requests_per_minute) is not None
    ]
    return min(limited, key=lambda status: status.remaining, default=None)


def _count_request(
    scopes: list[_Scope], now: datetime, tokens: int = 0
) -> tuple[list[int], datetime]:
    """Count one request (and ``tokens``) against each scope's minute; returns each scope's
    requests in the minute. Over a limit, refuse: the caller's transaction then takes the count
    back."""
    minute = now.replace(second=0, microsecond=0)
    resets_at = minute + _MINUTE
    counts: list[int] = []
    for scope in scopes:
        requests, total = ledger_sql.rate_bump(scope.key, minute, tokens)
        counts.append(requests)
        rpm, tpm = scope.requests_per_minute, scope.tokens_per_minute
        if rpm is not None and requests > rpm:
            _refuse_rate(scope, "requests per minute", rpm, requests - 1, resets_at)
        if tokens and tpm is not None and total > tpm:
            # The headers say where the request rate stands without this request.
            rate = _rate_now(scopes, now, counted=len(counts))
            _refuse_rate(scope, "tokens per minute", tpm, total - tokens, resets_at, rate)
    return counts, resets_at


def _count_in_redis(
    store: RedisCounters,
    scopes: list[_Scope],
    now: datetime,
    tokens: int = 0,
    flight: tuple[str, datetime, list[str]] | None = None,
) -> tuple[list[int], datetime]:
    """``_count_request`` and ``_check_concurrency`` in one script: count one request (and
    ``tokens``) against each scope's minute and, with ``flight``, take a slot for the call,
    only if every limit has room; else refuse as they do, and count nothing."""
    minute = now.replace(second=0, microsecond=0)
    resets_at = minute + _MINUTE
    limits = [
        Limits(s.key, s.requests_per_minute, s.tokens_per_minute, s.concurrent_requests)
        for s in scopes
    ]
    counted = store.admit(limits, minute=minute, now=now, tokens=tokens, flight=flight)
    if counted.refused:
        _refuse_counted(scopes, counted, resets_at)
    return counted.requests, resets_at


def _refuse_counted(scopes: list[_Scope], counted: Counted, resets_at: datetime) -> None:
    scope, used = scopes[counted.index], counted.used
    rate = _rate_status(scopes, counted.requests, resets_at)
    if counted.refused == "concurrent_requests":
        limit = scope.concurrent_requests
        refusal = RateLimited(
            f"{scope.name} limit reached: {limit} concurrent requests ({used} in flight)",
            details=_limit_details("concurrent_requests", scope.name, limit, used, None),
            retry_after=1,
        )
        refusal.extra_headers |= rate.headers() if rate is not None else {}
        raise refusal
    if counted.refused == "requests_per_minute":
        assert scope.requests_per_minute is not None
        _refuse_rate(scope, "requests per minute", scope.requests_per_minute, used, resets_at)
    assert scope.tokens_per_minute is not None
    _refuse_rate(scope, "tokens per minute", scope.tokens_per_minute, used, resets_at, rate)


def _rate_now(scopes: list[_Scope], now: datetime, *, counted: int = 0) -> RateStatus | None:
    """The tightest request rate as it stands, without this request, which the first
    ``counted`` scopes have counted already (their transaction will take it back)."""
    minute = now.replace(second=0, microsecond=0)
    keys = [scope.key for scope in scopes]
    store = redis_counters()
    found = store.requests(keys, minute) if store else ledger_sql.rate_requests(keys, minute)
    requests = [
        found.get(scope.key, 0) - (1 if i < counted else 0) for i, scope in enumerate(scopes)
    ]
    return _rate_status(scopes, requests, minute + _MINUTE)


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
    holds that row until commit, and taken back by the rollback when it went over; or, with
    Redis, one script. Redis unreachable, ``ServiceUnavailable``."""
    now = timezone.now()
    if quota is None:
        quota, _ = Quota.objects.get_or_create(user_id=user_id)
    store = redis_counters()
    try:
        if quota.is_suspended:
            raise UserSuspended("this account is suspended; ask an operator")
        if store is not None:
            scopes = _scopes(quota, _api_key(api_key, api_key_id))
            requests, resets_at = _count_in_redis(store, scopes, now)
        else:
            with transaction.atomic():
                api_key = _api_key(api_key, api_key_id)
                scopes = _scopes(quota, api_key)
                requests, resets_at = _count_request(scopes, now)
    except (QuotaExceeded, UserSuspended) as refusal:
        _refusal_count(user_id, refusal, now)
        raise
    return _rate_status(scopes, requests, resets_at)


def _check_concurrency(
    scopes: list[_Scope], user_id: int, api_key: ApiKey | None, now: datetime
) -> None:
    """Refuse when the calls in flight (unexpired reservations) already fill a scope's limit."""
    if all(scope.concurrent_requests is None for scope in scopes):
        return
    key_id = api_key.pk if api_key is not None else None
    user_running, key_running = ledger_sql.in_flight(user_id, key_id, now)
    for scope in scopes:
        limit = scope.concurrent_requests
        used = key_running if scope.name == "API key" else user_running
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
    inputs: InputBounds | None = None,
    api_key_id: int | None = None,
    api_key: ApiKey | None = None,
) -> Admission:
    """Admit one gateway call, reserving its worst case; raises ``RateLimited`` or
    ``BudgetExceeded`` (which say which limit, its value, what is used and when it resets),
    ``ModelNotPriced``, ``UnboundedCall``, or (Redis unreachable) ``ServiceUnavailable``."""
    worst = worst_case(model=model, body_bytes=body_bytes, max_tokens=max_tokens, inputs=inputs)
    now = timezone.now()
    try:
        admission = _admit(user_id, api_key, api_key_id, worst, now)
    except (QuotaExceeded, UserSuspended) as refusal:
        _refusal_count(user_id, refusal, now)
        raise
    admission.model, admission.worst = model, worst
    return admission


def _refuse_unbounded(windows: list[_Window], worst: WorstCase) -> None:
    """Refuse a call that a budget applies to when its worst case is not bounded."""
    if worst.uncapped and windows:
        raise UnboundedCall(
            f"this call may use more input than its body shows ({worst.uncapped}), and your "
            "budget needs a bound: the operator has set no GATEWAY_UNBOUNDED_INPUT_TOKENS",
            details={"unbounded": [worst.uncapped]},
        )
    if worst.unpriced_fees and any(w.budget.metric == Budget.Metric.USD for w in windows):
        raise UnboundedCall(
            f"this call's server-tool fees are not bounded ({worst.unpriced_fees}), and your "
            "budget needs a bound: set max_uses on the tool (the operator has set no "
            "GATEWAY_UNBOUNDED_SERVER_TOOL_USES)",
            details={"tools": [worst.unpriced_fees]},
        )


def _refusal_count(user_id: int, refusal: QuotaExceeded | UserSuspended, now: datetime) -> None:
    """Count a refusal for the operators' quota views. It is written after the refused
    transaction rolled back, so that it stays."""
    if isinstance(refusal, UserSuspended):
        limit, scope = "suspended", "user"
    else:
        limit = str(refusal.details.get("limit") or refusal.code)
        scope = str(refusal.details.get("scope") or "user")
    ledger_sql.refusal_count(
        user_id=user_id,
        limit=limit[:40],
        scope=scope[:16],
        minute=now.replace(second=0, microsecond=0),
    )


def _admit(
    user_id: int,
    api_key: ApiKey | None,
    api_key_id: int | None,
    worst: WorstCase,
    now: datetime,
) -> Admission:
    store = redis_counters()
    reservation_id = uuid.uuid4()
    expires_at = now + timedelta(seconds=settings.GATEWAY_RESERVATION_SECONDS)
    minute = now.replace(second=0, microsecond=0)
    flying = [f"user:{user_id}"]
    counted = False
    try:
        with transaction.atomic():
            quota = _lock(user_id)
            api_key = _api_key(api_key, api_key_id)
            key_id = api_key.pk if api_key is not None else None
            flying += [f"key:{key_id}"] if key_id is not None else []
            scopes = _scopes(quota, api_key)
            try:
                windows = _windows(quota, now)
                _refuse_unbounded(windows, worst)
                amounts = [_amount(window.budget, worst.tokens, worst.usd) for window in windows]
                for window, cost in zip(windows, amounts, strict=True):
                    used = _used(window)
                    if used + window.budget.reserved + cost > window.budget.limit:
                        _refuse_budget(window, used, cost, now)
                if store is None:
                    _check_concurrency(scopes, user_id, api_key, now)
            except QuotaExceeded as refusal:
                # The refused call is not counted, but its caller is known: like every answer
                # to a known caller, the refusal says where their request rate stands. (A
                # refusal over a rate limit, from the counting below, says so itself.)
                rate = _rate_now(scopes, now)
                refusal.extra_headers |= rate.headers() if rate is not None else {}
                raise
            if store is None:
                requests, resets_at = _count_request(scopes, now, worst.tokens)
            else:
                flight = (str(reservation_id), expires_at, flying)
                requests, resets_at = _count_in_redis(store, scopes, now, worst.tokens, flight)
                counted = True
            budget_ids = [window.budget.pk for window in windows]
            ledger_sql.budgets_reserve(list(zip(budget_ids, amounts, strict=True)))
            ledger_sql.reservation_insert(
                user_id=user_id,
                api_key_id=key_id,
                amounts={
                    str(pk): str(amount) for pk, amount in zip(budget_ids, amounts, strict=True)
                },
                tokens=worst.tokens,
                minute=minute,
                created_at=timezone.now(),
                expires_at=expires_at,
                reservation_id=reservation_id,
            )
    except BaseException:
        if counted and store is not None:
            # The database did not take the call: neither does Redis.
            _release_in_redis(
                store, str(reservation_id), minute, flying, requests=-1, tokens=-worst.tokens
            )
        raise
    return Admission(reservation_id, user_id, key_id, _rate_status(scopes, requests, resets_at))


def _release_in_redis(
    store: RedisCounters,
    member: str,
    minute: datetime,
    scopes: list[str],
    *,
    requests: int = 0,
    tokens: int = 0,
) -> None:
    """Give back a call's slot and what it counted; Redis unreachable, say so and carry on:
    the slot comes back when its lease ends, the tokens when the minute passes."""
    try:
        store.release(member=member, minute=minute, scopes=scopes, requests=requests, tokens=tokens)
    except ServiceUnavailable:
        log.warning(
            "Redis is unreachable: a call's slot stays taken until its lease ends",
            extra={"reservation_id": member},
        )


def _refuse_budget(window: _Window, used: Decimal, cost: Decimal, now: datetime) -> None:
    budget = window.budget
    unit = "USD" if budget.metric == Budget.Metric.USD else "tokens"
    spent = used + budget.reserved
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
    usage: TokenUsage | None,
    agent_id: object | None = None,
    session_id: object | None = None,
    request_id: str = "",
) -> UsageRecord | None:
    """Replace the call's reservation by what it really used: the ledger row, each budget's
    spend, the token rate. ``usage`` is None when the call returned none (it failed): then the
    reservation is only released. Runs once per admission.

    A call that returned usage always leaves its row: the answered model is charged at its
    price, or at the price of the model asked for when it has none; a session or agent that
    went meanwhile is left off the row; a database error is retried, and logged when the
    retries run out (with everything needed to write the row by hand)."""
    if admission.settled:
        return None
    record = _settle_retrying(
        admission, model, usage, agent_id, session_id, request_id, timezone.now(), spool=True
    )
    _replay_now_and_then()
    return record


def _settle_retrying(
    admission: Admission,
    answered: str,
    usage: TokenUsage | None,
    agent_id: object | None,
    session_id: object | None,
    request_id: str,
    now: datetime,
    *,
    spool: bool,
) -> UsageRecord | None:
    """Settle, retrying over database errors; when they persist, spool the settlement to disk
    (or, replaying the spool, raise)."""
    for attempt in range(_SETTLE_TRIES):
        try:
            model, price = _charged_model(answered, admission, now)
            record = _settle(admission, model, price, usage, agent_id, session_id, request_id, now)
        except IntegrityError:
            if agent_id is not None or session_id is not None:
                log.warning(
                    "gateway settlement: the call's agent or session is gone; recorded without "
                    "them",
                    extra={"agent_id": str(agent_id), "session_id": str(session_id)},
                )
                agent_id = session_id = None
                continue
            if not spool:
                raise
            break
        except DatabaseError:
            if attempt == _SETTLE_TRIES - 1:
                if not spool:
                    raise
                break
            log.error("gateway settlement: database error, retrying", exc_info=True)
            if connection.connection is not None and not connection.is_usable():
                connection.close()  # the server closed it: the next try connects afresh
            sleep(_SETTLE_BACKOFF * 2**attempt)
            continue
        except Exception:
            # Not the database's doing (a bug): the usage still lands on disk, not nowhere.
            if not spool:
                raise
            break
        admission.settled = True
        return record
    asked = admission.worst.price if admission.worst is not None else None
    entry = {
        "reservation_id": str(admission.reservation_id),
        "user_id": admission.user_id,
        "api_key_id": admission.api_key_id,
        "model": answered,
        "asked": admission.model,
        "usage": usage.as_dict() if usage is not None else None,
        "agent_id": agent_id,
        "session_id": session_id,
        "request_id": request_id,
        "at": now.isoformat(),
        "price": {name: str(getattr(asked, name)) for name in _PRICES} if asked else None,
    }
    log.critical(
        "gateway settlement failed %s times: spooled to disk until the database answers",
        _SETTLE_TRIES,
        extra={"settlement": entry},
        exc_info=True,
    )
    ledger_spool(entry)
    admission.settled = True
    return None


# A spooled settlement keeps the price it was admitted at: every rate, and its date.
_PRICES = tuple(name for name in ledger_sql.fields(ModelPrice) if name not in ("id", "model"))
_SPOOL_LOOK_SECONDS = 30.0
_spool_looked_at = [0.0]


def _replay_now_and_then() -> None:
    """Once the database answers again, settle what this machine spooled (looking every
    ``_SPOOL_LOOK_SECONDS`` at most)."""
    now = monotonic()
    if now - _spool_looked_at[0] < _SPOOL_LOOK_SECONDS:
        return
    _spool_looked_at[0] = now
    settlements_replay()


def settlements_replay() -> int:
    """Settle the gateway calls whose settlement this machine spooled while its database
    failed; returns how many. A call whose upstream request id is in the ledger already is not
    written twice."""
    return ledger_spooled(_replay)


def _replay(entry: dict[str, Any]) -> None:
    request_id = str(entry.get("request_id") or "")
    if (
        request_id
        and UsageRecord.objects.filter(user_id=entry["user_id"], request_id=request_id).exists()
    ):
        return
    admission = Admission(uuid.UUID(entry["reservation_id"]), entry["user_id"], entry["api_key_id"])
    admission.model = entry["asked"]
    if entry.get("price"):
        rates = {k: v if k == "effective_from" else Decimal(v) for k, v in entry["price"].items()}
        price = ModelPrice(model=entry["asked"], **rates)
        admission.worst = WorstCase(0, Decimal(0), price=price)
    usage = TokenUsage(**entry["usage"]) if entry["usage"] is not None else None
    _settle_retrying(
        admission,
        entry["model"],
        usage,
        entry["agent_id"],
        entry["session_id"],
        request_id,
        datetime.fromisoformat(entry["at"]),
        spool=False,
    )


def _charged_model(answered: str, admission: Admission, at: datetime) -> tuple[str, ModelPrice]:
    """The model a call is charged as: the one that answered, when it is priced, else the one
    asked for, at the price it was admitted at (even if that price went since), never nothing."""
    price = price_for(model=answered, at=at) if answered and len(answered) <= 100 else None
    if price is not None:
        return answered, price
    asked = admission.worst.price if admission.worst is not None else None
    if admission.model:
        return admission.model, asked or model_price(model=admission.model, at=at)
    return answered, model_price(model=answered, at=at)


def _settle(
    admission: Admission,
    model: str,
    price: ModelPrice,
    usage: TokenUsage | None,
    agent_id: object | None,
    session_id: object | None,
    request_id: str,
    now: datetime,
) -> UsageRecord | None:
    used = usage or TokenUsage()
    cost = cost_of(usage=used, price=price)
    store = redis_counters()
    record = None
    with transaction.atomic():
        quota = ledger_sql.quota_lock(admission.user_id)
        if quota is None:
            raise Quota.DoesNotExist(f"no quota for user {admission.user_id}")
        reservation = ledger_sql.reservation_take(admission.reservation_id)
        _settle_budgets(_windows(quota, now), reservation, used.total, cost)
        unused = used.total - reservation.tokens if reservation is not None else 0
        if store is None and unused:
            assert reservation is not None
            ledger_sql.rate_tokens_add(_scope_keys(reservation), reservation.minute, unused)
        if usage is not None:
            record = usage_record(
                user_id=admission.user_id,
                model=model,
                usage=usage,
                price=price,
                agent_id=agent_id,
                session_id=session_id,
                request_id=request_id,
                at=now,
            )
    if store is not None:
        keys = [f"user:{admission.user_id}"]
        keys += [f"key:{admission.api_key_id}"] if admission.api_key_id else []
        minute = reservation.minute if reservation is not None else now
        member = str(admission.reservation_id)
        _release_in_redis(store, member, minute, keys, tokens=unused)
    return record


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
    changes = []
    for window in windows:
        budget = window.budget
        back = Decimal(held.get(str(budget.pk), 0))
        spent = Decimal(0)
        if budget.window != Budget.Window.ROLLING:
            spent = _amount(budget, tokens, cost)
        if back or spent:
            budget.reserved = max(Decimal(0), budget.reserved - back)
            changes.append((budget.pk, budget.reserved, spent))
    ledger_sql.budgets_settle(changes)


def reservations_release_expired(*, now: datetime | None = None) -> int:
    """Release reservations whose call never settled (its process died), and forget old
    rate counters. Beat runs it every minute."""
    now = now or timezone.now()
    settlements_replay()  # what this machine spooled is settled before its reservation goes
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
