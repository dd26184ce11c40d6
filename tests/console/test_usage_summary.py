"""Usage summaries: the hourly roll-up for whole hours and the ledger for the partial hours at the
edges of a range, so a summary is exact for any range; and the budgets nearest their limits."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import Count, Q, Sum

from agents.models import Agent
from console.models import Budget, Quota, UsageHourly, UsageRecord
from console.selectors import budgets_nearest, usage_summary, usage_totals
from console.services import TokenUsage, usage_record

pytestmark = pytest.mark.django_db

SONNET, HAIKU = "claude-sonnet-5-5", "claude-haiku-5-5"
KINDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


def spend(user, when: datetime, *, model: str = SONNET, agent=None, tokens: int = 1000):
    return usage_record(
        user_id=user.pk,
        model=model,
        usage=TokenUsage(input_tokens=tokens, output_tokens=tokens // 10),
        agent_id=agent.pk if agent else None,
        at=when,
    )


def agent_of(user) -> Agent:
    return Agent.objects.create(
        owner=user, model=SONNET, status="running", sandbox_id=str(uuid.uuid4())
    )


def ledger_totals(start: datetime, end: datetime, *groups: Q) -> dict:
    rows = UsageRecord.objects.filter(*groups, created_at__gte=start, created_at__lt=end)
    sums = rows.aggregate(
        requests=Count("id"), cost_usd=Sum("cost_usd"), **{k: Sum(k) for k in KINDS}
    )
    return {key: value or 0 for key, value in sums.items()}


def group(group_by: str, key) -> Q:
    """The ledger rows of one group of a summary."""
    if group_by == "hour":
        return Q(created_at__gte=key, created_at__lt=key + timedelta(hours=1))
    if group_by == "day":
        return Q(created_at__date=key)
    return Q(**{{"user": "user_id", "agent": "agent_id"}.get(group_by, group_by): key})


def metrics_of(row: dict) -> dict:
    return {key: row[key] for key in ("requests", "cost_usd", *KINDS)}


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture(autouse=True)
def _priced_in_march(prices_from):
    prices_from(date(2026, 1, 1))  # the rows here are written in March 2026


# --- Exactness -----------------------------------------------------------------------------------


def test_a_range_of_whole_hours_reads_the_rollup_alone(user, django_assert_num_queries):
    spend(user, at(1, 10, 5))
    spend(user, at(1, 10, 55))
    spend(user, at(1, 12, 30))
    with django_assert_num_queries(1):
        totals = usage_totals(user_ids=[user.pk], start=at(1, 10), end=at(1, 12))
    assert metrics_of(totals) == ledger_totals(at(1, 10), at(1, 12))
    assert totals["requests"] == 2


def test_a_range_with_partial_hours_adds_the_ledger_rows_of_its_edges(
    user, django_assert_num_queries
):
    for when in (at(1, 10, 5), at(1, 10, 40), at(1, 11, 10), at(1, 12, 20), at(1, 12, 50)):
        spend(user, when)
    start, end = at(1, 10, 30), at(1, 12, 30)
    with django_assert_num_queries(3):  # the roll-up, then each partial hour
        totals = usage_totals(user_ids=[user.pk], start=start, end=end)
    assert totals["requests"] == 3  # 10:40, 11:10 and 12:20
    assert metrics_of(totals) == ledger_totals(start, end)


def test_a_range_within_one_hour_reads_the_ledger_alone(user, django_assert_num_queries):
    spend(user, at(1, 10, 5))
    spend(user, at(1, 10, 20))
    spend(user, at(1, 10, 45))
    with django_assert_num_queries(1):
        rows = usage_summary(
            user_ids=[user.pk], start=at(1, 10, 10), end=at(1, 10, 45), group_by="hour"
        )
    assert [(row["hour"], row["requests"]) for row in rows] == [(at(1, 10), 1)]


def test_the_end_of_a_range_is_excluded_and_its_start_included(user):
    spend(user, at(1, 10, 30))
    spend(user, at(1, 11, 30))
    assert usage_totals(user_ids=[user.pk], start=at(1, 10, 30), end=at(1, 11, 30))["requests"] == 1


@pytest.mark.parametrize("group_by", ["user", "agent", "model", "day", "hour"])
def test_summaries_of_any_range_equal_the_ledgers_own_sums(user, bob, group_by):
    rng = random.Random(group_by)
    agents = [agent_of(user), agent_of(bob), None]
    for _ in range(120):
        who = rng.choice([user, bob])
        spend(
            who,
            at(1, 0) + timedelta(seconds=rng.randrange(3 * 86_400)),
            model=rng.choice([SONNET, HAIKU]),
            agent=rng.choice(agents),
            tokens=rng.randrange(1, 5000),
        )
    for _ in range(15):
        start = at(1, 0) + timedelta(seconds=rng.randrange(2 * 86_400))
        end = start + timedelta(seconds=rng.randrange(1, 86_400))
        rows = usage_summary(user_ids=None, start=start, end=end, group_by=group_by)
        assert sum(row["requests"] for row in rows) == ledger_totals(start, end)["requests"]
        for row in rows:
            key = row[{"user": "user_id", "agent": "agent_id"}.get(group_by, group_by)]
            expected = ledger_totals(start, end, group(group_by, key))
            assert metrics_of(row) == expected, (start, end, key)
            assert row["total_tokens"] == sum(expected[kind] for kind in KINDS)


# --- Groupings and order -------------------------------------------------------------------------


def test_users_agents_and_models_come_dearest_first(user, bob):
    helper = agent_of(user)
    spend(user, at(1, 10), model=HAIKU, tokens=100)
    spend(user, at(1, 11), model=SONNET, agent=helper, tokens=5000)
    spend(bob, at(1, 12), model=SONNET, tokens=2000)
    window = {"start": at(1, 0), "end": at(2, 0), "user_ids": None}

    by_user = usage_summary(group_by="user", **window)
    assert [row["user_id"] for row in by_user] == [user.pk, bob.pk]
    by_model = usage_summary(group_by="model", **window)
    assert [(row["model"], row["requests"]) for row in by_model] == [(SONNET, 2), (HAIKU, 1)]
    by_agent = usage_summary(group_by="agent", **window)
    assert [row["agent_id"] for row in by_agent] == [str(helper.pk), None]
    assert by_agent[1]["requests"] == 2  # calls without an agent, from both users


def test_days_and_hours_come_in_time_order(user):
    for when in (at(2, 9), at(1, 23, 30), at(1, 9, 15), at(2, 9, 45)):
        spend(user, when)
    hours = usage_summary(user_ids=[user.pk], start=at(1, 0), end=at(3, 0), group_by="hour")
    assert [(row["hour"], row["requests"]) for row in hours] == [
        (at(1, 9), 1),
        (at(1, 23), 1),
        (at(2, 9), 2),
    ]
    days = usage_summary(user_ids=[user.pk], start=at(1, 0), end=at(3, 0), group_by="day")
    assert [(row["day"], row["requests"]) for row in days] == [
        (date(2026, 3, 1), 2),
        (date(2026, 3, 2), 2),
    ]


def test_days_may_be_counted_in_a_users_time_zone(user):
    spend(user, at(2, 3, 30))  # 22:30 on March 1st in New York
    spend(user, at(2, 12))
    days = usage_summary(
        user_ids=[user.pk],
        start=at(1, 0),
        end=at(3, 0),
        group_by="day",
        tz="America/New_York",
    )
    assert [(row["day"], row["requests"]) for row in days] == [
        (date(2026, 3, 1), 1),
        (date(2026, 3, 2), 1),
    ]


def test_a_summary_for_some_users_leaves_the_others_out(user, bob, outsider):
    spend(user, at(1, 10, 30))
    spend(bob, at(1, 11))
    spend(outsider, at(1, 11, 10))
    rows = usage_summary(
        user_ids=[user.pk, bob.pk], start=at(1, 10, 15), end=at(1, 12, 5), group_by="user"
    )
    assert sorted(row["user_id"] for row in rows) == sorted([user.pk, bob.pk])


def test_a_summary_for_no_users_asks_nothing(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert usage_summary(user_ids=[], start=at(1, 0), end=at(2, 0), group_by="user") == []
        assert usage_totals(user_ids=[], start=at(1, 0), end=at(2, 0))["requests"] == 0


def test_an_empty_range_is_empty_and_bad_arguments_are_refused(user):
    spend(user, at(1, 10))
    assert usage_summary(user_ids=None, start=at(1, 11), end=at(1, 10), group_by="model") == []
    with pytest.raises(ValueError, match="aware"):
        usage_totals(user_ids=None, start=datetime(2026, 3, 1), end=at(2, 0))
    with pytest.raises(ValueError, match="group_by"):
        usage_summary(user_ids=None, start=at(1, 0), end=at(2, 0), group_by="week")  # type: ignore[arg-type]


def test_the_rollup_the_summaries_read_is_the_ledger_per_hour(user):
    spend(user, at(1, 10, 5))
    spend(user, at(1, 10, 55))
    row = UsageHourly.objects.get()
    assert (row.hour, row.requests) == (at(1, 10), 2)


# --- Budgets -------------------------------------------------------------------------------------


def budget(user, limit: str, **fields) -> Budget:
    return Budget.objects.create(user=user, limit=Decimal(limit), **fields)


def test_the_budgets_nearest_their_limits_come_first_and_no_more_than_asked(
    user, bob, outsider, django_assert_max_num_queries
):
    now = at(15, 12)
    budget(user, "10", used=Decimal("9"), window_started_at=at(1, 0))  # 10% left
    budget(bob, "10", used=Decimal("2"), reserved=Decimal("3"), window_started_at=at(1, 0))  # 50%
    budget(outsider, "10", used=Decimal("1"), window_started_at=at(1, 0))  # 90%
    with django_assert_max_num_queries(1):
        nearest = budgets_nearest(count=2, now=now)
    assert [(s.username, s.remaining) for s in nearest] == [
        ("alice", Decimal("1")),
        ("bob", Decimal("5")),
    ]


def test_a_calendar_window_that_has_ended_counts_as_unused(user):
    Quota.objects.create(user=user, timezone="Asia/Tokyo")
    # Spent on March 14th, Tokyo time; it is now March 15th there.
    budget(user, "10", window=Budget.Window.DAY, used=Decimal("8"), window_started_at=at(13, 15))
    (standing,) = budgets_nearest(count=5, now=at(15, 1))
    assert (standing.used, standing.remaining) == (Decimal(0), Decimal("10"))


def test_a_rolling_budget_counts_its_hours_from_the_rollup(user):
    budget(
        user, "100000", metric=Budget.Metric.TOKENS, window=Budget.Window.ROLLING, rolling_hours=2
    )
    spend(user, at(15, 9, 30), tokens=5000)  # before the window
    spend(user, at(15, 10, 10), tokens=1000)
    spend(user, at(15, 11, 20), tokens=2000)
    (standing,) = budgets_nearest(count=5, now=at(15, 11, 30))
    assert standing.used == Decimal(1100 + 2200)
    assert standing.remaining == Decimal(100000 - 3300)
