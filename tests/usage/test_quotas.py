"""Budget burn-downs, the users nearest their limits, refusals counted where limits refuse,
and the operators' quota page."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import Agent
from console.models import Budget, Quota, Refusal
from console.services import TokenUsage, gateway_admit, request_admit, usage_record
from console.services.counters import redis_counters
from plumbing.errors import BudgetExceeded, RateLimited, UserSuspended
from usage.selectors import budget_burndowns, limits_nearest, refusals_by_limit

pytestmark = pytest.mark.django_db

SONNET = "claude-sonnet-5-5"  # $2 per million input tokens


def spend(user, dollars: int, when: datetime) -> None:
    usage_record(
        user_id=user.pk,
        model=SONNET,
        usage=TokenUsage(input_tokens=dollars * 500_000),
        at=when,
    )


def budget(user, limit: str, **fields) -> Budget:
    Quota.objects.get_or_create(user=user)
    return Budget.objects.create(user=user, limit=Decimal(limit), **fields)


# --- Burn-down -----------------------------------------------------------------------------------


def test_a_budget_runs_out_when_its_remainder_is_spent_at_the_recent_rate(user):
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    b = budget(user, "100", used=Decimal("40"), window_started_at=datetime(2026, 11, 1, tzinfo=UTC))
    for hours_ago in (1, 5, 9, 13, 17, 21):  # $24 in the last 24 hours: $1 an hour
        spend(user, 4, now - timedelta(hours=hours_ago, minutes=30))
    (found,) = budget_burndowns(user_ids=[user.pk], now=now)
    assert found.budget_id == b.pk
    assert found.rate_per_hour == Decimal(1)
    assert found.runs_out_at == now + timedelta(hours=60)  # $60 left at $1 an hour
    assert found.window_end == datetime(2026, 12, 1, tzinfo=UTC)
    assert not found.exhausted


def test_a_budget_that_lasts_past_its_window_does_not_run_out_at_this_rate(user):
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    budget(user, "100", used=Decimal("10"), window_started_at=datetime(2026, 11, 1, tzinfo=UTC))
    spend(user, 2, now - timedelta(hours=3))  # $2 a day: $90 would last 45 days
    (found,) = budget_burndowns(user_ids=[user.pk], now=now)
    assert found.runs_out_at is None and found.rate_per_hour > 0


def test_a_young_window_uses_its_own_rate_and_a_spent_budget_is_out_now(user, make_user):
    now = datetime(2026, 11, 20, 6, tzinfo=UTC)
    day = budget(user, "8", window="day", used=Decimal("3"), window_started_at=now.replace(hour=0))
    (found,) = budget_burndowns(user_ids=[user.pk], now=now)
    assert found.budget_id == day.pk
    assert found.rate_per_hour == Decimal("0.5")  # $3 in six hours
    assert found.runs_out_at == now + timedelta(hours=10)  # $5 left
    bob = make_user("bob")
    budget(bob, "5", used=Decimal("5"), window_started_at=now.replace(day=1))
    first, second = budget_burndowns(user_ids=None, now=now)
    assert (first.username, first.exhausted, first.runs_out_at) == ("bob", True, now)
    assert second.username == "alice"


def test_a_users_burndown_never_shows_another_users_budget(user, outsider):
    budget(outsider, "10")
    assert budget_burndowns(user_ids=[user.pk]) == []


# --- Refusals ------------------------------------------------------------------------------------


def test_a_budget_refusal_is_counted_after_its_transaction_rolls_back(user):
    budget(user, "0.01", window="day")
    with pytest.raises(BudgetExceeded):
        gateway_admit(user_id=user.pk, model=SONNET, body_bytes=10_000, max_tokens=10_000)
    with pytest.raises(BudgetExceeded):
        gateway_admit(user_id=user.pk, model=SONNET, body_bytes=10_000, max_tokens=10_000)
    (refusal,) = Refusal.objects.all()
    assert (refusal.user_id, refusal.limit, refusal.scope, refusal.count) == (
        user.pk,
        "usd_per_day",
        "user",
        2,
    )


def test_rate_and_suspension_refusals_are_counted_by_limit(user):
    Quota.objects.create(user=user, requests_per_minute=1)
    request_admit(user_id=user.pk)
    with pytest.raises(RateLimited):
        request_admit(user_id=user.pk)
    Quota.objects.filter(user=user).update(is_suspended=True)
    with pytest.raises(UserSuspended):
        request_admit(user_id=user.pk)
    by_limit, by_user = refusals_by_limit()
    assert {(r.limit, r.refused, r.users) for r in by_limit} == {
        ("requests_per_minute", 1, 1),
        ("suspended", 1, 1),
    }
    assert {(r["user__username"], r["limit"]) for r in by_user} == {
        ("alice", "requests_per_minute"),
        ("alice", "suspended"),
    }


def test_refusals_older_than_a_day_are_left_out(user):
    old = timezone.now() - timedelta(hours=25)
    Refusal.objects.create(user=user, limit="usd_per_month", scope="user", minute=old, count=9)
    assert refusals_by_limit() == ([], [])


# --- Nearest limits ------------------------------------------------------------------------------


def test_the_users_nearest_their_limits_come_first(user, make_user, django_assert_num_queries):
    bob = make_user("bob")
    Quota.objects.create(user=user, max_agents=4)
    Quota.objects.create(user=bob, max_agents=10)
    for owner, count in ((user, 3), (bob, 2)):
        for _ in range(count):
            Agent.objects.create(
                owner=owner, model=SONNET, status="running", sandbox_id=str(uuid.uuid4())
            )
    spent = budget(bob, "10", used=Decimal("9"), window_started_at=timezone.now())
    # With Redis, this minute's rates and the calls in flight are read there, not queried.
    with django_assert_num_queries(3 if redis_counters() else 5):
        nearest = limits_nearest(count=3)
    assert [(s.username, s.limit, round(s.percent)) for s in nearest] == [
        ("bob", f"budget {spent}", 90),
        ("alice", "agents", 75),
        ("bob", "agents", 20),
    ]
    assert nearest[0].budget_id == spent.pk


# --- The page ------------------------------------------------------------------------------------


def test_the_quota_page_is_for_operators_only(client, user):
    client.force_login(user)
    assert client.get("/usage/quotas/").status_code == 403
    client.logout()
    assert client.get("/usage/quotas/").status_code == 302


def test_the_quota_page_shows_limits_refusals_and_links_to_the_admin(client, operator, user):
    quota = Quota.objects.create(user=user, requests_per_minute=1)
    spent = budget(user, "0.01", window="day")
    request_admit(user_id=user.pk)
    with pytest.raises(RateLimited):
        request_admit(user_id=user.pk)
    client.force_login(operator)
    html = client.get("/usage/quotas/").content.decode()
    assert "requests per minute" in html and "requests_per_minute" in html
    assert f"/admin/console/quota/{quota.pk}/change/" in html
    assert f"/admin/console/budget/{spent.pk}/change/" in html
    assert f"/admin/console/user/{user.pk}/change/" in html
    fragment = client.get("/usage/quotas/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in fragment and fragment.lstrip().startswith('<div id="usage-quotas"')
