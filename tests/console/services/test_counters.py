"""Where the rate and concurrency counters live: Redis with ``REDIS_URL`` (an API request then
writes nothing to the database), the database without; a call's slot comes back when it
settles, when the database does not take it, or when its lease ends; Redis unreachable, every
request and call is refused with a 503, never let through uncounted."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest
from django.db import IntegrityError
from django.utils import timezone

from console.models import ApiKey, Budget, RateCounter, Reservation, UsageRecord
from console.selectors import calls_in_flight
from console.services import (
    TokenUsage,
    api_key_create,
    gateway_admit,
    gateway_settle,
    request_admit,
)
from plumbing.errors import RateLimited, ServiceUnavailable
from tests.console.services.test_limits import (
    MODEL,
    counted,
    gateway_body,
    post_gateway,
    room_in_this_minute,
    set_quota,
)
from tests.servers import free_port

db = pytest.mark.django_db(transaction=True)

CALL = dict(api_key_id=None, model=MODEL, body_bytes=100, max_tokens=10)


@pytest.fixture
def console(asgi_server, fake_anthropic) -> str:
    return asgi_server


@pytest.fixture
def key(user) -> str:
    return api_key_create(user=user)[1]


@pytest.fixture
def redis_down(settings) -> None:
    """``REDIS_URL`` names a port where nothing listens."""
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"


@db
@pytest.mark.redis
def test_with_redis_an_api_request_is_counted_without_touching_the_database(
    user, django_assert_num_queries
):
    room_in_this_minute(5)
    quota = set_quota(user, requests_per_minute=2)
    with django_assert_num_queries(0):
        first = request_admit(user_id=user.pk, quota=quota)
        second = request_admit(user_id=user.pk, quota=quota)
    assert first is not None and second is not None
    assert (first.remaining, second.remaining) == (1, 0)
    with pytest.raises(RateLimited) as caught:
        request_admit(user_id=user.pk, quota=quota)
    details = caught.value.details
    assert (details["limit"], details["value"], details["used"]) == (
        "requests_per_minute",
        "2",
        "2",
    )
    assert caught.value.extra_headers["X-RateLimit-Remaining"] == "0"
    assert not RateCounter.objects.exists()
    assert counted(f"user:{user.pk}") == (2, 0)  # the refused request was not counted


@db
@pytest.mark.redis
def test_with_redis_a_gateway_call_holds_its_slot_there_until_it_settles(user):
    room_in_this_minute(5)
    set_quota(user, concurrent_requests=1, requests_per_minute=100)
    first = gateway_admit(user_id=user.pk, **CALL)
    assert calls_in_flight([user.pk], timezone.now()) == {user.pk: 1}
    with pytest.raises(RateLimited) as caught:
        gateway_admit(user_id=user.pk, **CALL)
    details = caught.value.details
    assert (details["limit"], details["scope"], details["used"]) == (
        "concurrent_requests",
        "user",
        "1",
    )
    # Where the request rate stands, without the refused call: one counted.
    assert caught.value.extra_headers["X-RateLimit-Remaining"] == "99"

    gateway_settle(admission=first, model=MODEL, usage=TokenUsage(output_tokens=5))
    assert calls_in_flight([user.pk], timezone.now()) == {}
    assert not RateCounter.objects.exists()
    second = gateway_admit(user_id=user.pk, **CALL)
    gateway_settle(admission=second, model=MODEL, usage=None)
    assert counted(f"user:{user.pk}")[0] == 2


@db
def test_a_slot_whose_call_never_settled_comes_back_when_its_lease_ends(user, settings):
    """The process that admitted the call died: nothing settles it, and its slot frees itself
    when its lease (the reservation's expiry) ends, in Redis as in the database."""
    settings.GATEWAY_RESERVATION_SECONDS = 1
    set_quota(user, concurrent_requests=1)
    gateway_admit(user_id=user.pk, **CALL)
    with pytest.raises(RateLimited):
        gateway_admit(user_id=user.pk, **CALL)
    time.sleep(1.1)
    assert calls_in_flight([user.pk], timezone.now()) == {}
    gateway_admit(user_id=user.pk, **CALL)


@db
def test_a_call_the_database_does_not_take_is_not_counted(user):
    """The key went while its call was admitted: the reservation cannot be written, and the
    request and the slot counted for it are taken back."""
    set_quota(user, concurrent_requests=1, requests_per_minute=10)
    room_in_this_minute(5)
    key, _ = api_key_create(user=user)
    key.concurrent_requests = 1
    key.save()
    gone = ApiKey.objects.get(pk=key.pk)
    ApiKey.objects.filter(pk=key.pk).delete()
    with pytest.raises(IntegrityError):
        gateway_admit(user_id=user.pk, api_key=gone, model=MODEL, body_bytes=100, max_tokens=10)
    assert not Reservation.objects.exists()
    assert calls_in_flight([user.pk], timezone.now()) == {}
    assert counted(f"user:{user.pk}") == (0, 0)
    gateway_admit(user_id=user.pk, **CALL)  # the user's one slot is free


@db
def test_redis_unreachable_an_api_request_is_refused_with_a_503(user, redis_down):
    quota = set_quota(user, requests_per_minute=100)
    with pytest.raises(ServiceUnavailable) as caught:
        request_admit(user_id=user.pk, quota=quota)
    assert caught.value.details == {"service": "redis"}
    assert not RateCounter.objects.exists()


@db
def test_redis_unreachable_the_agent_list_answers_503_in_the_error_shape(
    console, user, key, redis_down
):
    response = httpx.get(
        f"{console}/v1/agents/list", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert error["details"]["service"] == "redis"
    assert int(response.headers["Retry-After"]) >= 1


@db
def test_redis_unreachable_a_gateway_call_is_refused_and_costs_nothing(
    console, user, key, fake_anthropic, redis_down
):
    budget = Budget.objects.create(user=user, metric="usd", window="day", limit=Decimal(1))
    response = post_gateway(console, key, gateway_body())
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert not fake_anthropic.requests  # never sent upstream
    budget.refresh_from_db()
    assert (budget.reserved, budget.used) == (0, 0)
    assert not Reservation.objects.exists() and not UsageRecord.objects.exists()
