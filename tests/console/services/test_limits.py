"""Budgets and rate limits: windows that reset on time, worst-case reservations settled to what a
call used, and refusals that say which limit, its value, what is used and when it resets. The
windows themselves are tested in ``test_budget_windows.py``.

The HTTP tests go through the console served over ASGI, with the fake Anthropic behind the
gateway; the concurrent cases are in ``test_limits_concurrency.py`` (PostgreSQL).
"""

from __future__ import annotations

import json
import math
import time
import uuid
import zoneinfo
from datetime import datetime, timedelta
from decimal import Decimal

import anthropic
import httpx
import pytest
from django.utils import timezone

from agents.models import Agent
from config.celery import app
from console.models import (
    Budget,
    Quota,
    RateCounter,
    Reservation,
    UsageHourly,
    UsageRecord,
)
from console.selectors import rates_in_minutes
from console.services import (
    TokenUsage,
    WorstCase,
    api_key_create,
    budget_window,
    cost_of,
    gateway_admit,
    gateway_settle,
    price_for,
    reservations_release_expired,
    worst_case,
)
from console.services.counters import redis_counters
from console.tasks import reservations_release_expired_task
from plumbing.errors import BudgetExceeded, RateLimited
from tests.fakes.anthropic import Error, Text, count_tokens
from tests.polling import eventually

MODEL = "claude-sonnet-5-5"
USD, TOKENS = Budget.Metric.USD, Budget.Metric.TOKENS
DAY, MONTH, ROLLING = Budget.Window.DAY, Budget.Window.MONTH, Budget.Window.ROLLING

db = pytest.mark.django_db(transaction=True)


# --- Helpers -----------------------------------------------------------------------------------


def room_in_this_minute(seconds: float) -> None:
    """Request rates are counted per clock minute: wait, if need be, for a minute with at least
    ``seconds`` left, so that a test's requests all fall in the same one."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


def counted(scope: str) -> tuple[int, int]:
    """The requests and tokens ``scope`` counted in this minute and the one before, wherever
    the counters live (RateCounter rows, or Redis with ``REDIS_URL``)."""
    current = timezone.now().replace(second=0, microsecond=0)
    minutes = rates_in_minutes([current - timedelta(minutes=1), current])
    found = [counts.get(scope, (0, 0)) for counts in minutes.values()]
    return sum(r for r, _ in found), sum(t for _, t in found)


def seed_counts(scope: str, minute: datetime, requests: int, tokens: int = 0) -> None:
    """Counts in ``scope``'s ``minute`` as if its requests had been admitted, wherever the
    counters live."""
    store = redis_counters()
    if store is None:
        RateCounter.objects.create(scope=scope, minute=minute, requests=requests, tokens=tokens)
        return
    key = store.rate_key(minute)
    store.client.hset(key, mapping={f"r:{scope}": requests, f"t:{scope}": tokens})
    store.client.expire(key, 3600)


def gateway_body(text: str = "How are you?", max_tokens: int = 100, **extra: object) -> bytes:
    """A Messages request, as the exact bytes sent (their length bounds the input tokens)."""
    message = {"role": "user", "content": text}
    fields = {"model": MODEL, "max_tokens": max_tokens, "messages": [message], **extra}
    return json.dumps(fields).encode()


def worst_of(body: bytes) -> WorstCase:
    return worst_case(model=MODEL, body_bytes=len(body), max_tokens=json.loads(body)["max_tokens"])


def post_gateway(base_url: str, key: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{base_url}/gateway/v1/messages",
        content=body,
        headers={"x-api-key": key, "content-type": "application/json"},
        timeout=10,
    )


def set_quota(user, **limits: object) -> Quota:
    quota, _ = Quota.objects.update_or_create(user=user, defaults=limits)
    return quota


def rate_headers(response: httpx.Response) -> tuple[int, int]:
    """(limit, remaining) from the X-RateLimit-* headers, after checking the reset is the end
    of the current clock minute."""
    reset = int(response.headers["X-RateLimit-Reset"])
    assert reset % 60 == 0 and -2 < reset - time.time() <= 61, reset
    return int(response.headers["X-RateLimit-Limit"]), int(
        response.headers["X-RateLimit-Remaining"]
    )


def refusal(response: httpx.Response, code: str) -> dict:
    """The error's details, after checking it is a 429 in the console's shape with Retry-After."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert int(response.headers["Retry-After"]) >= 1
    assert set(error["details"]) >= {"limit", "scope", "value", "used", "resets_at"}
    return error["details"]


def next_local_midnight(tz_name: str) -> datetime:
    tz = zoneinfo.ZoneInfo(tz_name)
    tomorrow = timezone.now().astimezone(tz).date() + timedelta(days=1)
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=tz)


@pytest.fixture
def console(asgi_server, fake_anthropic) -> str:
    return asgi_server


@pytest.fixture
def key(user) -> str:
    """A new API key of alice (its secret)."""
    return api_key_create(user=user)[1]


# --- Reservation and settlement ----------------------------------------------------------------


@db
def test_admission_reserves_the_worst_case_on_every_budget_and_settlement_replaces_it(user):
    set_quota(user, tokens_per_minute=10_000_000)
    budgets = {
        (metric, window): Budget.objects.create(
            user=user,
            metric=metric,
            window=window,
            rolling_hours=3 if window == ROLLING else None,
            limit=Decimal(1_000_000),
        )
        for metric in (USD, TOKENS)
        for window in (DAY, MONTH, ROLLING)
    }
    worst = worst_case(model=MODEL, body_bytes=300, max_tokens=1000)
    # 300 bytes at the dearest input rate ($4 1-hour cache writes), 1000 output tokens at $10.
    assert worst.tokens == 1300
    assert worst.usd == Decimal("0.0112")

    admission = gateway_admit(
        user_id=user.pk, api_key_id=None, model=MODEL, body_bytes=300, max_tokens=1000
    )
    for (metric, _), budget in budgets.items():
        budget.refresh_from_db()
        assert budget.reserved == (worst.usd if metric == USD else worst.tokens)
        assert budget.used == 0
    assert counted(f"user:{user.pk}")[1] == 1300

    usage = TokenUsage(input_tokens=40, output_tokens=60, cache_read_input_tokens=100)
    record = gateway_settle(admission=admission, model=MODEL, usage=usage, request_id="req_1")
    assert record.cost_usd == cost_of(usage=usage, price=price_for(model=MODEL, at=timezone.now()))
    assert record.cost_usd == Decimal("0.00069")  # (40 * 2 + 60 * 10 + 100 * 0.10) / 1e6
    for (metric, window), budget in budgets.items():
        budget.refresh_from_db()
        assert budget.reserved == 0
        # A rolling window counts the hourly roll-ups; a calendar one keeps its running total.
        expected = 0 if window == ROLLING else (record.cost_usd if metric == USD else 200)
        assert budget.used == expected
    assert UsageHourly.objects.get(user=user).cost_usd == record.cost_usd
    assert counted(f"user:{user.pk}")[1] == 200
    assert not Reservation.objects.exists()
    # Settling twice changes nothing.
    assert gateway_settle(admission=admission, model=MODEL, usage=usage) is None
    assert UsageRecord.objects.count() == 1


@db
def test_a_budget_admits_a_call_whose_worst_case_fits_exactly_and_no_more(user):
    worst = worst_case(model=MODEL, body_bytes=200, max_tokens=500)
    budget = Budget.objects.create(user=user, metric=USD, window=MONTH, limit=Decimal(1))
    Budget.objects.filter(pk=budget.pk).update(used=Decimal(1) - worst.usd)
    admit = dict(user_id=user.pk, api_key_id=None, model=MODEL, body_bytes=200, max_tokens=500)

    first = gateway_admit(**admit)  # used + worst case == limit
    with pytest.raises(BudgetExceeded) as caught:
        gateway_admit(**admit)  # the first call's worst case is still reserved
    assert Decimal(caught.value.details["used"]) == Decimal(1)
    assert Decimal(caught.value.details["requested"]) == worst.usd

    gateway_settle(admission=first, model=MODEL, usage=TokenUsage(input_tokens=1))
    budget.refresh_from_db()
    assert budget.used == Decimal(1) - worst.usd + Decimal("0.000002")
    assert budget.reserved == 0
    with pytest.raises(BudgetExceeded):  # 2 millionths of a dollar short now
        gateway_admit(**admit)


@db
@pytest.mark.parametrize("tz", ["Asia/Kolkata", "America/Los_Angeles", "UTC"])
def test_a_daily_budget_starts_afresh_at_midnight_in_the_quotas_zone(user, tz):
    set_quota(user, timezone=tz)
    today_began = next_local_midnight(tz) - timedelta(days=1)
    budget = Budget.objects.create(
        user=user,
        metric=USD,
        window=DAY,
        limit=Decimal(1),
        used=Decimal(1),  # all spent
        window_started_at=today_began,
    )
    admit = dict(user_id=user.pk, api_key_id=None, model=MODEL, body_bytes=100, max_tokens=10)
    with pytest.raises(BudgetExceeded) as caught:  # the window is today's: still spent
        gateway_admit(**admit)
    assert caught.value.details["limit"] == "usd_per_day"
    assert datetime.fromisoformat(caught.value.details["resets_at"]) == next_local_midnight(tz)

    # The same spend, counted in a window that began a second before today did, is yesterday's.
    Budget.objects.filter(pk=budget.pk).update(window_started_at=today_began - timedelta(seconds=1))
    gateway_admit(**admit)
    budget.refresh_from_db()
    assert budget.used == 0
    assert budget.window_started_at == today_began
    assert budget.reserved == worst_case(model=MODEL, body_bytes=100, max_tokens=10).usd


@db
def test_a_monthly_budget_starts_afresh_on_the_first_of_the_month(user):
    set_quota(user, timezone="Asia/Kolkata")
    month_began, _ = budget_window(Budget(window=MONTH), "Asia/Kolkata", timezone.now())
    budget = Budget.objects.create(
        user=user,
        metric=TOKENS,
        window=MONTH,
        limit=Decimal(1000),
        used=Decimal(1000),
        window_started_at=month_began - timedelta(days=3),
    )
    gateway_admit(user_id=user.pk, api_key_id=None, model=MODEL, body_bytes=100, max_tokens=10)
    budget.refresh_from_db()
    assert (budget.used, budget.reserved) == (0, 110)
    assert budget.window_started_at == month_began


@db
@pytest.mark.parametrize("metric", [USD, TOKENS])
def test_a_rolling_budget_counts_only_the_usage_of_its_last_hours(user, metric):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    old, recent = Decimal(500), Decimal(30)

    def spent(at: datetime, amount: Decimal) -> None:
        if metric == USD:
            UsageHourly.objects.create(user=user, hour=at, model=MODEL, requests=1, cost_usd=amount)
        else:
            UsageHourly.objects.create(
                user=user, hour=at, model=MODEL, requests=1, input_tokens=int(amount)
            )

    # A three-hour window: this hour and the two before. The hour before that is out of it,
    # even if the clock turns to the next hour while the test runs.
    spent(hour - timedelta(hours=3), old)
    spent(hour - timedelta(hours=1), recent)
    worst = worst_case(model=MODEL, body_bytes=100, max_tokens=10)
    cost = worst.usd if metric == USD else Decimal(worst.tokens)
    budget = Budget.objects.create(
        user=user, metric=metric, window=ROLLING, rolling_hours=3, limit=recent + cost
    )
    admit = dict(user_id=user.pk, api_key_id=None, model=MODEL, body_bytes=100, max_tokens=10)
    gateway_admit(**admit)
    with pytest.raises(BudgetExceeded) as caught:
        gateway_admit(**admit)
    details = caught.value.details
    assert details["limit"] == f"{metric}_per_rolling"
    assert Decimal(details["used"]) == recent + cost  # spent in the window, and in flight
    resets_at = datetime.fromisoformat(details["resets_at"])
    assert resets_at - timedelta(hours=1) <= hour + timedelta(hours=1) <= resets_at
    budget.refresh_from_db()
    assert budget.used == 0  # what a rolling window spent is read from the roll-ups


@db
def test_an_expired_reservation_is_released_by_the_sweeper_and_a_late_settlement_still_pays(
    user, settings
):
    set_quota(user, concurrent_requests=1)
    budget = Budget.objects.create(user=user, metric=USD, window=MONTH, limit=Decimal(1))
    admit = dict(user_id=user.pk, api_key_id=None, model=MODEL, body_bytes=100, max_tokens=1000)
    stuck = gateway_admit(**admit)
    with pytest.raises(RateLimited) as caught:
        gateway_admit(**admit)
    assert caught.value.details["limit"] == "concurrent_requests"

    assert reservations_release_expired() == 0  # nothing has expired yet
    budget.refresh_from_db()
    assert budget.reserved > 0

    expiry = timezone.now() + timedelta(seconds=settings.GATEWAY_RESERVATION_SECONDS)
    assert Reservation.objects.get().expires_at <= expiry
    assert reservations_release_expired(now=expiry + timedelta(seconds=1)) == 1
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.used == 0
    assert not Reservation.objects.exists()

    # The call's process was only slow, not dead: what it used is still owed.
    record = gateway_settle(admission=stuck, model=MODEL, usage=TokenUsage(output_tokens=100))
    budget.refresh_from_db()
    assert budget.used == record.cost_usd == Decimal("0.001")
    assert budget.reserved == 0


@db
def test_the_beat_task_releases_expired_reservations(user):
    budget = Budget.objects.create(user=user, metric=TOKENS, window=DAY, limit=Decimal(10_000))
    admit = dict(user_id=user.pk, api_key_id=None, model=MODEL, body_bytes=100, max_tokens=10)
    gateway_admit(**admit)
    kept = gateway_admit(**admit)
    Reservation.objects.exclude(pk=kept.reservation_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    old_minute = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=2)
    RateCounter.objects.create(scope=f"user:{user.pk}", minute=old_minute, requests=7)

    assert reservations_release_expired_task.apply().result == 1
    assert list(Reservation.objects.values_list("pk", flat=True)) == [kept.reservation_id]
    budget.refresh_from_db()
    assert budget.reserved == 110  # the call still in flight
    assert not RateCounter.objects.filter(minute=old_minute).exists()  # old minutes are dropped


def test_beat_sweeps_reservations_every_minute():
    entry = app.conf.beat_schedule["release-expired-reservations"]
    assert entry == {"task": "console.tasks.reservations_release_expired", "schedule": 60.0}
    app.loader.import_default_modules()
    task = app.tasks["console.tasks.reservations_release_expired"]
    assert task.time_limit and task.soft_time_limit and task.max_retries


# --- Through the gateway -----------------------------------------------------------------------


@db
@pytest.mark.parametrize("stream", [False, True])
def test_a_call_anthropic_fails_releases_its_reservation_and_costs_nothing(
    console, user, key, fake_anthropic, stream
):
    budget = Budget.objects.create(user=user, metric=USD, window=DAY, limit=Decimal(1))
    fake_anthropic.enqueue(Error(500, "api_error", "upstream broke"))
    response = post_gateway(console, key, gateway_body(stream=stream))
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"
    assert rate_headers(response) == (100, 99)
    budget.refresh_from_db()
    assert (budget.used, budget.reserved) == (0, 0)
    assert not Reservation.objects.exists()
    assert not UsageRecord.objects.exists() and not UsageHourly.objects.exists()
    assert counted(f"user:{user.pk}") == (1, 0)  # the request counts; no tokens were used


@db
def test_a_stream_the_caller_abandons_is_charged_what_anthropic_reported(
    console, user, key, fake_anthropic
):
    budget = Budget.objects.create(user=user, metric=USD, window=DAY, limit=Decimal(1))
    fake_anthropic.chunk_delay = 0.05
    fake_anthropic.enqueue(Text(" ".join(f"word{i}" for i in range(200))))
    try:
        with httpx.stream(
            "POST",
            f"{console}/gateway/v1/messages",
            content=gateway_body("talk", max_tokens=1000, stream=True),
            headers={"x-api-key": key, "content-type": "application/json"},
            timeout=10,
        ) as response:
            assert response.status_code == 200
            assert rate_headers(response) == (100, 99)
            for line in response.iter_lines():
                if "word3 " in line:
                    break
    finally:
        fake_anthropic.chunk_delay = 0.0
    eventually(UsageRecord.objects.exists)
    record = UsageRecord.objects.get()
    assert record.input_tokens == count_tokens("talk")
    assert 4 <= record.output_tokens < 200
    budget.refresh_from_db()
    assert budget.used == record.cost_usd > 0
    assert budget.reserved == 0 and not Reservation.objects.exists()


# --- Refusals and the X-RateLimit-* headers ----------------------------------------------------


@db
def test_every_gateway_response_carries_the_request_rate(console, user, key, fake_anthropic):
    room_in_this_minute(10)
    set_quota(user, requests_per_minute=10)
    assert rate_headers(post_gateway(console, key, gateway_body())) == (10, 9)
    with httpx.stream(
        "POST",
        f"{console}/gateway/v1/messages",
        content=gateway_body(stream=True),
        headers={"x-api-key": key, "content-type": "application/json"},
    ) as streamed:
        assert streamed.status_code == 200
        assert rate_headers(streamed) == (10, 8)
        streamed.read()
    fake_anthropic.enqueue(Error(529, "overloaded_error", "busy"))
    failed = post_gateway(console, key, gateway_body())
    assert failed.status_code == 529
    assert rate_headers(failed) == (10, 7)


@db
@pytest.mark.parametrize("stream", [False, True])
def test_over_its_request_rate_the_gateway_refuses_with_which_limit_and_when_it_resets(
    console, user, outsider, key, api_key, fake_anthropic, stream
):
    room_in_this_minute(10)
    set_quota(user, requests_per_minute=2)
    body = gateway_body(stream=stream)
    assert [post_gateway(console, key, body).status_code for _ in range(2)] == [200, 200]
    refused = post_gateway(console, key, body)
    details = refusal(refused, "rate_limited")
    assert refused.json()["error"]["type"] == "rate_limit_error"  # what Anthropic's SDKs read
    assert details == {
        "limit": "requests_per_minute",
        "scope": "user",
        "value": "2",
        "used": "2",
        "resets_at": details["resets_at"],
        "retry_after": int(refused.headers["Retry-After"]),
    }
    assert refused.json()["error"]["retry_after"] == details["retry_after"]
    assert rate_headers(refused) == (2, 0)
    assert "x-should-retry" not in refused.headers  # a minute's wait is worth it
    resets_at = datetime.fromisoformat(details["resets_at"])
    assert resets_at.timestamp() == int(refused.headers["X-RateLimit-Reset"])
    assert (
        0
        <= int(refused.headers["Retry-After"]) - math.ceil(resets_at.timestamp() - time.time())
        <= 1
    )
    assert len(fake_anthropic.requests) == 2  # the refused call never reached Anthropic
    # Limits are per user: another user's calls go through.
    assert post_gateway(console, api_key(outsider), body).status_code == 200


@db
def test_the_sdk_sees_a_refusal_as_anthropics_rate_limit_error(console, user, key, fake_anthropic):
    room_in_this_minute(10)
    set_quota(user, requests_per_minute=1)
    sdk = anthropic.Anthropic(base_url=f"{console}/gateway", api_key=key, max_retries=0)
    ask = dict(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    sdk.messages.create(**ask)
    with pytest.raises(anthropic.RateLimitError) as caught:
        sdk.messages.create(**ask)
    assert caught.value.body["error"]["code"] == "rate_limited"
    assert caught.value.response.headers["X-RateLimit-Remaining"] == "0"


@db
def test_a_call_over_budget_says_which_budget_what_is_spent_and_when_it_resets(
    console, user, key, fake_anthropic
):
    room_in_this_minute(10)
    set_quota(user, timezone="Asia/Kolkata", requests_per_minute=10)
    body = gateway_body()
    worst = worst_of(body)
    limit = Decimal("0.05")
    budget = Budget.objects.create(
        user=user, metric=USD, window=DAY, limit=limit, used=limit - worst.usd
    )
    admitted = post_gateway(console, key, body)  # its worst case fits exactly
    assert admitted.status_code == 200
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.used > limit - worst.usd

    refused = post_gateway(console, key, body)
    details = refusal(refused, "budget_exceeded")
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert details["limit"] == "usd_per_day" and details["scope"] == "user"
    assert Decimal(details["value"]) == limit
    assert Decimal(details["used"]) == budget.used
    assert Decimal(details["requested"]) == worst.usd
    assert details["budget_id"] == budget.pk
    resets_at = datetime.fromisoformat(details["resets_at"])
    assert resets_at == next_local_midnight("Asia/Kolkata")
    assert abs(int(refused.headers["Retry-After"]) - (resets_at.timestamp() - time.time())) < 5
    # The refusal answers to a caller who is known, so it carries the request rate too: the
    # refused call was not counted.
    assert rate_headers(refused) == (10, 9)
    assert len(fake_anthropic.requests) == 1
    # Waiting cannot help before the window resets: Anthropic's SDKs are told not to retry.
    assert refused.headers["x-should-retry"] == "false"


@db
def test_the_sdk_gives_up_at_once_on_a_budget_refusal(console, user, key, fake_anthropic):
    # With its default retries, the SDK would otherwise sleep out the Retry-After: hours.
    Budget.objects.create(user=user, metric=USD, window=MONTH, limit=Decimal("0.000001"))
    sdk = anthropic.Anthropic(base_url=f"{console}/gateway", api_key=key, max_retries=2)
    started = time.monotonic()
    with pytest.raises(anthropic.RateLimitError) as caught:
        sdk.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert time.monotonic() - started < 5
    assert caught.value.body["error"]["code"] == "budget_exceeded"
    assert int(caught.value.response.headers["Retry-After"]) > 60


@db
def test_a_token_budget_refusal_states_whole_numbers(user):
    Budget.objects.create(user=user, metric=TOKENS, window=MONTH, limit=Decimal(150))
    with pytest.raises(BudgetExceeded) as caught:
        gateway_admit(user_id=user.pk, api_key_id=None, model=MODEL, body_bytes=100, max_tokens=100)
    details = caught.value.details
    assert (details["limit"], details["value"], details["used"], details["requested"]) == (
        "tokens_per_month",
        "150",
        "0",
        "200",
    )
    assert "0 of 150 tokens used or in flight, this call may need 200" in caught.value.message


@db
def test_tokens_per_minute_count_the_worst_case_until_the_call_settles(
    console, user, key, fake_anthropic
):
    room_in_this_minute(10)
    body = gateway_body()
    worst = worst_of(body)
    # Room for two worst cases, less one token: the second call goes through only because the
    # first one settled to what it used.
    set_quota(user, tokens_per_minute=2 * worst.tokens - 1)
    used = []
    for _ in range(2):
        response = post_gateway(console, key, body)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        used.append(sum(v for v in usage.values() if isinstance(v, int)))  # not the breakdowns
    assert counted(f"user:{user.pk}")[1] == sum(used)

    set_quota(user, tokens_per_minute=worst.tokens - 1)
    refused = post_gateway(console, key, body)
    details = refusal(refused, "rate_limited")
    assert details["limit"] == "tokens_per_minute"
    assert (details["scope"], details["value"], details["used"]) == (
        "user",
        str(worst.tokens - 1),
        str(sum(used)),
    )
    assert int(refused.headers["Retry-After"]) <= 60
    assert rate_headers(refused) == (100, 98)


@db
def test_an_api_keys_own_limits_bind_when_tighter_than_its_users(console, user, fake_anthropic):
    room_in_this_minute(10)
    set_quota(user, requests_per_minute=100)
    tight, tight_secret = api_key_create(user=user)
    tight.requests_per_minute = 1
    tight.save()
    _, other_secret = api_key_create(user=user)
    body = gateway_body()

    first = post_gateway(console, tight_secret, body)
    assert first.status_code == 200
    assert rate_headers(first) == (1, 0)  # the tightest limit is the one shown
    refused = post_gateway(console, tight_secret, body)
    details = refusal(refused, "rate_limited")
    assert (details["limit"], details["scope"], details["value"], details["used"]) == (
        "requests_per_minute",
        "API key",
        "1",
        "1",
    )
    assert rate_headers(refused) == (1, 0)
    # The key's limit holds on the API as on the gateway.
    api_refused = httpx.get(
        f"{console}/v1/agents/list", headers={"Authorization": f"Bearer {tight_secret}"}
    )
    assert refusal(api_refused, "rate_limited")["scope"] == "API key"
    # The user's other keys are not held by it: the user has made 2 counted requests.
    other = post_gateway(console, other_secret, body)
    assert other.status_code == 200
    assert rate_headers(other) == (100, 98)


@db
def test_an_api_keys_token_and_concurrency_limits_bind_when_tighter_than_its_users(user):
    set_quota(user, tokens_per_minute=None, concurrent_requests=10)
    tight, _ = api_key_create(user=user)
    other, _ = api_key_create(user=user)
    tight.concurrent_requests, tight.tokens_per_minute = 1, 1000
    tight.save()

    def admit(key_id: int, max_tokens: int = 100):
        return gateway_admit(
            user_id=user.pk, api_key_id=key_id, model=MODEL, body_bytes=100, max_tokens=max_tokens
        )

    with pytest.raises(RateLimited) as caught:
        admit(tight.pk, max_tokens=901)
    assert caught.value.details | {"resets_at": None} == {
        "limit": "tokens_per_minute",
        "scope": "API key",
        "value": "1000",
        "used": "0",
        "resets_at": None,
    }
    admit(tight.pk)
    with pytest.raises(RateLimited) as caught:
        admit(tight.pk)
    assert caught.value.details == {
        "limit": "concurrent_requests",
        "scope": "API key",
        "value": "1",
        "used": "1",
        "resets_at": None,
    }
    assert caught.value.retry_after == 1
    admit(other.pk)  # the user's other key still has room


@db
def test_every_hypercore_api_response_carries_the_request_rate(console, user, outsider, key):
    room_in_this_minute(10)
    set_quota(user, requests_per_minute=3)
    headers = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(f"{console}/v1/agents/list", headers=headers)
    assert listed.status_code == 200 and rate_headers(listed) == (3, 2)
    missing = httpx.get(f"{console}/v1/agents/get?agent_id={uuid.uuid4()}", headers=headers)
    assert missing.status_code == 404 and rate_headers(missing) == (3, 1)
    stats = httpx.get(f"{console}/v1/agents/stats", headers=headers)
    assert stats.status_code == 200 and rate_headers(stats) == (3, 0)

    refused = httpx.get(f"{console}/v1/agents/list", headers=headers)
    details = refusal(refused, "rate_limited")
    assert (details["limit"], details["scope"], details["value"], details["used"]) == (
        "requests_per_minute",
        "user",
        "3",
        "3",
    )
    assert rate_headers(refused) == (3, 0)
    # Another user is not held by alice's limit.
    other = httpx.get(
        f"{console}/v1/agents/list",
        headers={"Authorization": f"Bearer {api_key_create(user=outsider)[1]}"},
    )
    assert other.status_code == 200 and rate_headers(other) == (100, 99)


@db
def test_every_chat_proxy_response_carries_the_request_rate(console, user, key):
    room_in_this_minute(10)
    set_quota(user, requests_per_minute=2)
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{console}/agents/{uuid.uuid4()}/v1/agent/chat"
    missing = httpx.post(url, json={"prompt": "hi"}, headers=headers)
    assert missing.status_code == 404 and rate_headers(missing) == (2, 1)
    invalid = httpx.post(url, json={"prompt": " "}, headers=headers)
    assert invalid.status_code == 400 and rate_headers(invalid) == (2, 0)
    refused = httpx.post(url, json={"prompt": "hi"}, headers=headers)
    details = refusal(refused, "rate_limited")
    assert (details["limit"], details["value"], details["used"]) == (
        "requests_per_minute",
        "2",
        "2",
    )
    assert rate_headers(refused) == (2, 0)


@db
def test_a_chat_turn_through_a_running_agent_carries_the_request_rate(
    console, user, key, settings, fake_anthropic
):
    settings.CONSOLE_BASE_URL = console
    settings.GATEWAY_URL = f"{console}/gateway"
    room_in_this_minute(30)
    set_quota(user, requests_per_minute=100)
    http = httpx.Client(base_url=console, timeout=30, headers={"Authorization": f"Bearer {key}"})
    spawned = http.post("/v1/agents/spawn", json={"user_id": "alice"})
    assert spawned.status_code == 201, spawned.text
    assert rate_headers(spawned) == (100, 99)
    agent = Agent.objects.get(pk=spawned.json()["agent_id"])
    assert agent.status == "running", agent.last_error
    chat = http.post(f"/agents/{agent.pk}/v1/agent/chat", json={"prompt": "Hello"})
    assert chat.status_code == 200, chat.text
    assert rate_headers(chat) == (100, 98)
    # The agent's own call to Claude through the gateway counted against alice too.
    assert counted(f"user:{user.pk}")[0] >= 3
