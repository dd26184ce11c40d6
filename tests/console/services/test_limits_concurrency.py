"""Limits hold under load: many concurrent requests through the console served over ASGI, each
admitted under its user's row lock on PostgreSQL (the rates and calls in flight counted there,
or in Redis with ``REDIS_URL``), never let more through than a limit allows: served by one
process, or by three at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.db.models import Sum

from console.models import Budget, Quota, Reservation, UsageRecord
from console.services import api_key_create, worst_case
from tests.conftest import PLATFORM_KEY
from tests.console.services.test_limits import counted, gateway_body, room_in_this_minute
from tests.fakes.anthropic import Hang, Text
from tests.servers import free_port, serving

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

MODEL = "claude-sonnet-5-5"
CALLS = 200

Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


def fire(sends: list[Send], *, hold: tuple[threading.Event, int] | None = None):
    """Send all the requests at once, each on its own connection, and return their responses.

    With ``hold=(release, k)``, ``release`` is set once all but ``k`` requests have been
    answered: the admitted calls, hanging upstream until then, stay in flight while all the
    others are decided.
    """

    async def all_at_once() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            tasks = [asyncio.create_task(send(client)) for send in sends]
            if hold is not None:
                release, held = hold
                pending: set[asyncio.Task] = set(tasks)
                while len(pending) > held:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                release.set()
            return await asyncio.gather(*tasks)

    return asyncio.run(all_at_once())


def spread(make: Callable[[str], Send], servers: list[str], count: int) -> list[Send]:
    """``count`` requests, made by ``make(base_url)``, sent to each server in turn."""
    return [make(servers[n % len(servers)]) for n in range(count)]


def gateway_call(base_url: str, key: str, body: bytes) -> Send:
    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(
            f"{base_url}/gateway/v1/messages",
            content=body,
            headers={"x-api-key": key, "content-type": "application/json"},
        )

    return send


def set_quota(user, **limits: object) -> None:
    unlimited = {
        "requests_per_minute": None,
        "tokens_per_minute": None,
        "concurrent_requests": None,
    }
    Quota.objects.update_or_create(user=user, defaults=unlimited | limits)


def _database_url() -> str:
    """``DATABASE_URL`` for the test database (PostgreSQL: these tests need it)."""
    db = connection.settings_dict
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{host}/{db['NAME']}"


@pytest.fixture(params=["one process", "three processes"])
def console(request, fake_anthropic, tmp_path) -> Iterator[list[str]]:
    """The console's base URLs: the test's own ASGI server, or three uvicorn processes on the
    test database (and on ``REDIS_URL``'s Redis, when it is set), as ``make run``'s web and
    gateway processes share them."""
    if request.param == "one process":
        yield [request.getfixturevalue("asgi_server")]
        return
    metrics = tmp_path / "prometheus"
    metrics.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": _database_url(),
        "SECRET_KEY": django_settings.SECRET_KEY,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "CONSOLE_VAR_DIR": str(tmp_path / "var"),
        "ANTHROPIC_API_KEY": PLATFORM_KEY,
        "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
        "ANTHROPIC_MAX_RETRIES": "0",
    }
    with contextlib.ExitStack() as stack:
        urls = []
        for n in range(3):
            port = free_port()
            command = [
                *(sys.executable, "-m", "uvicorn", "config.asgi:application"),
                *("--port", str(port), "--log-level", "warning", "--lifespan", "off"),
            ]
            url, log = f"http://127.0.0.1:{port}", tmp_path / f"web-{n}.log"
            stack.enter_context(serving(command, log=log, env=env, url=url, health="/health"))
            urls.append(url)
        yield urls


def test_concurrent_calls_never_spend_more_than_the_budget(console, user, fake_anthropic):
    """Every call uses exactly its worst case, so a budget with room for k of them admits k,
    however the 200 race for it."""
    k = 37
    set_quota(user)
    _, key = api_key_create(user=user)
    body = gateway_body("How much?", max_tokens=50)
    worst = worst_case(model=MODEL, body_bytes=len(body), max_tokens=50)
    # The worst case prices the body's bytes as 1-hour cache writes, the dearest input, and
    # max_tokens as output; Anthropic reports exactly that.
    used_up = Text("ok", input_tokens=0, output_tokens=50, cache_creation_1h_input_tokens=len(body))
    fake_anthropic.enqueue(*[used_up] * CALLS)
    monthly = Budget.objects.create(
        user=user, metric="usd", window="month", limit=k * worst.usd + worst.usd / 2
    )
    daily = Budget.objects.create(user=user, metric="usd", window="day", limit=Decimal(100))
    tokens = Budget.objects.create(user=user, metric="tokens", window="day", limit=10**9)

    responses = fire(spread(lambda url: gateway_call(url, key, body), console, CALLS))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: k, 429: CALLS - k}, statuses
    for refused in (r for r in responses if r.status_code == 429):
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded"
        details = error["details"]
        assert (details["limit"], details["scope"]) == ("usd_per_month", "user")
        assert Decimal(details["value"]) == monthly.limit
        assert Decimal(details["used"]) + worst.usd > monthly.limit
        assert int(refused.headers["Retry-After"]) >= 1
    spent = UsageRecord.objects.aggregate(total=Sum("cost_usd"))["total"]
    assert UsageRecord.objects.count() == k
    assert spent == k * worst.usd
    for budget in (monthly, daily, tokens):
        budget.refresh_from_db()
        assert budget.reserved == 0
    assert monthly.used == daily.used == spent <= monthly.limit
    assert tokens.used == k * worst.tokens
    assert not Reservation.objects.exists()


def test_calls_that_cost_less_than_their_worst_case_settle_within_the_budget(
    console, user, fake_anthropic
):
    """Calls that use less than their worst case free room as they settle; whatever the
    interleaving, spend stays within the budget and is what the ledger says."""
    set_quota(user)
    _, key = api_key_create(user=user)
    body = gateway_body("How much?", max_tokens=400)
    worst = worst_case(model=MODEL, body_bytes=len(body), max_tokens=400)
    budget = Budget.objects.create(user=user, metric="usd", window="day", limit=20 * worst.usd)

    responses = fire(spread(lambda url: gateway_call(url, key, body), console, CALLS // 2))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and statuses[200] >= 20, statuses
    budget.refresh_from_db()
    spent = UsageRecord.objects.aggregate(total=Sum("cost_usd"))["total"]
    assert UsageRecord.objects.count() == statuses[200]
    assert budget.used == spent <= budget.limit
    assert budget.reserved == 0 and not Reservation.objects.exists()


def test_concurrent_requests_admit_exactly_the_requests_per_minute(console, user, fake_anthropic):
    """API requests and gateway calls count against the same rate, each exactly once."""
    rpm = 50
    set_quota(user, requests_per_minute=rpm)
    _, key = api_key_create(user=user)
    api, gateway = [], []

    def api_request(base_url: str) -> Send:
        async def send(client: httpx.AsyncClient) -> httpx.Response:
            response = await client.get(
                f"{base_url}/v1/agents/list", headers={"Authorization": f"Bearer {key}"}
            )
            api.append(response)
            return response

        return send

    def gateway_request(base_url: str) -> Send:
        call = gateway_call(base_url, key, gateway_body())

        async def send(client: httpx.AsyncClient) -> httpx.Response:
            response = await call(client)
            gateway.append(response)
            return response

        return send

    room_in_this_minute(20)
    apis = spread(api_request, console, CALLS // 2)
    calls = spread(gateway_request, console, CALLS // 2)
    responses = fire([send for pair in zip(apis, calls, strict=True) for send in pair])

    admitted = [r for r in responses if r.status_code == 200]
    assert len(admitted) == rpm
    assert counted(f"user:{user.pk}")[0] == rpm
    # Each admitted request was counted once: together they saw every count from 1 to 50.
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in admitted) == list(range(rpm))
    for refused in (r for r in responses if r.status_code != 200):
        assert refused.status_code == 429
        details = refused.json()["error"]["details"]
        assert (details["limit"], details["value"], details["used"]) == (
            "requests_per_minute",
            str(rpm),
            str(rpm),
        )
        assert refused.headers["X-RateLimit-Remaining"] == "0"
    admitted_calls = sum(r.status_code == 200 for r in gateway)
    assert len(fake_anthropic.requests) == UsageRecord.objects.count() == admitted_calls
    assert not Reservation.objects.exists()


def test_calls_in_flight_never_exceed_the_concurrency_limits(console, user, fake_anthropic):
    """Admitted calls hang upstream while the rest race for a slot: exactly the limit is let
    through, for one key (tighter) and for the user."""
    set_quota(user, concurrent_requests=5)
    tight, tight_key = api_key_create(user=user)
    tight.concurrent_requests = 2
    tight.save()
    _, key = api_key_create(user=user)
    body = gateway_body()

    release = threading.Event()
    fake_anthropic.enqueue(*[Hang(10, release)] * 2)
    sends = spread(lambda url: gateway_call(url, tight_key, body), console, 30)
    by_tight_key = fire(sends, hold=(release, 2))
    assert Counter(r.status_code for r in by_tight_key) == {200: 2, 429: 28}
    for refused in (r for r in by_tight_key if r.status_code == 429):
        details = refused.json()["error"]["details"]
        assert (details["limit"], details["scope"], details["used"]) == (
            "concurrent_requests",
            "API key",
            "2",
        )

    release = threading.Event()
    fake_anthropic.enqueue(*[Hang(10, release)] * 5)
    sends = spread(lambda url: gateway_call(url, key, body), console, CALLS)
    responses = fire(sends, hold=(release, 5))
    assert Counter(r.status_code for r in responses) == {200: 5, 429: CALLS - 5}
    for refused in (r for r in responses if r.status_code == 429):
        details = refused.json()["error"]["details"]
        assert (details["limit"], details["scope"], details["value"], details["used"]) == (
            "concurrent_requests",
            "user",
            "5",
            "5",
        )
        assert int(refused.headers["Retry-After"]) == 1
    assert not Reservation.objects.exists()
    assert UsageRecord.objects.count() == 7
