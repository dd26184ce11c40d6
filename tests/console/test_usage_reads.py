"""Ranges read from the daily roll-up, the hourly one and the ledger's edges: every grouping is
exactly what the ledger holds, the daily roll-up is kept current and can be rebuilt."""

from __future__ import annotations

import importlib
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate, TruncHour

from agents.models import Agent
from console.ledger_reads import AMOUNTS, Listing, usage_grouped, usage_hours, usage_listed
from console.models import UsageDaily, UsageHourly, UsageRecord
from console.services import TokenUsage, usage_record

pytestmark = pytest.mark.django_db

MODELS = ("claude-sonnet-5-5", "claude-haiku-5-5")
KINDS = AMOUNTS[1:5]
T0 = datetime(2026, 11, 10, tzinfo=UTC)


@pytest.fixture
def ledger(user, make_user):
    """Sixty calls of two users, their agents and none, over four days."""
    rng = random.Random(7)
    bob = make_user("bob")
    agents = [
        Agent.objects.create(
            owner=owner, model=MODELS[0], status="running", sandbox_id=str(uuid.uuid4())
        )
        for owner in (user, bob)
    ]
    for _ in range(60):
        owner = rng.choice((user, bob))
        agent = rng.choice([None, *(a for a in agents if a.owner_id == owner.pk)])
        usage_record(
            user_id=owner.pk,
            model=rng.choice(MODELS),
            usage=TokenUsage(
                input_tokens=rng.randrange(1, 50_000),
                output_tokens=rng.randrange(1, 5_000),
                cache_read_input_tokens=rng.randrange(0, 9_000),
            ),
            agent_id=agent.pk if agent else None,
            at=T0 + timedelta(seconds=rng.randrange(4 * 86_400)),
        )
    return user, bob


def expected(start, end, keys, user_ids=None):
    rows = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
    if user_ids is not None:
        rows = rows.filter(user_id__in=user_ids)
    columns = {
        "user": "user_id",
        "agent": "agent_id",
        "model": "model",
        "day": "day",
        "hour": "hour",
    }
    rows = rows.annotate(
        day=TruncDate("created_at", tzinfo=UTC), hour=TruncHour("created_at", tzinfo=UTC)
    )
    found = {}
    sums = {"requests": Count("id"), **{k: Sum(k) for k in KINDS}, "cost_usd": Sum("cost_usd")}
    if not keys:
        total = rows.aggregate(**sums)
        return {(): total} if total["requests"] else {}
    for row in rows.order_by().values(*(columns[k] for k in keys)).annotate(**sums):
        key = tuple(
            str(row["agent_id"]) if k == "agent" and row["agent_id"] else row[columns[k]]
            for k in keys
        )
        found[key] = {name: row[name] for name in AMOUNTS}
    return found


@pytest.mark.parametrize(
    "keys", [(), ("user",), ("user", "agent"), ("model",), ("day", "model"), ("agent", "day")]
)
def test_every_grouping_of_unaligned_ranges_is_what_the_ledger_holds(ledger, keys):
    rng = random.Random(len(keys))
    for _ in range(12):
        start = T0 + timedelta(seconds=rng.randrange(2 * 86_400), microseconds=7)
        end = start + timedelta(seconds=rng.randrange(1, 2 * 86_400))
        got = usage_grouped(user_ids=None, start=start, end=end, keys=keys)
        want = expected(start, end, keys)
        for sums in want.values():  # SQLite sums amounts in floating point
            sums["cost_usd"] = sums["cost_usd"].quantize(got[next(iter(got))]["cost_usd"])
        assert got == want


def test_hours_are_their_own_groups_and_a_user_filter_holds(ledger):
    user, _bob = ledger
    start, end = T0 + timedelta(hours=30, minutes=20), T0 + timedelta(hours=40, minutes=10)
    got = usage_grouped(user_ids=[user.pk], start=start, end=end, keys=("hour",))
    ledger_rows = UsageRecord.objects.filter(
        user_id=user.pk, created_at__gte=start, created_at__lt=end
    )
    assert sum(v["requests"] for v in got.values()) == ledger_rows.count()
    assert all(key[0].minute == 0 and start - timedelta(hours=1) < key[0] < end for key in got)


def test_a_month_of_everyone_reads_days_then_hours_then_each_edge(
    ledger, django_assert_num_queries
):
    start = T0 - timedelta(days=20, minutes=-17)
    end = T0 + timedelta(days=3, hours=5, minutes=31)
    with django_assert_num_queries(4):  # days, the hours around them, the ledger at each end
        usage_grouped(user_ids=None, start=start, end=end, keys=("user", "agent"))


def test_days_in_another_time_zone_fold_hours(ledger):
    start, end = T0, T0 + timedelta(days=4)
    got = usage_grouped(user_ids=None, start=start, end=end, keys=("day",), tz="Asia/Tokyo")
    assert sum(v["requests"] for v in got.values()) == 60
    assert min(key[0] for key in got) == (T0 + timedelta(hours=9)).date()


def test_the_daily_rollup_is_kept_current_and_the_migration_rebuilds_it(ledger):
    def daily():
        return {
            (r.user_id, r.day, r.agent_id, r.model): tuple(getattr(r, a) for a in AMOUNTS)
            for r in UsageDaily.objects.all()
        }

    current = daily()
    hourly = UsageHourly.objects.annotate(d=TruncDate("hour", tzinfo=UTC))
    sums = (
        hourly.order_by()
        .values("user_id", "d", "agent_id", "model")
        .annotate(**{a: Sum(a) for a in AMOUNTS})
    )
    assert {
        (r["user_id"], r["d"], r["agent_id"], r["model"]): tuple(r[a] for a in AMOUNTS)
        for r in sums
    } == current
    UsageDaily.objects.all().delete()
    migration = importlib.import_module("console.migrations.0006_usage_daily_and_refusals")
    migration.roll_up_the_days(apps, None)
    assert daily() == current


def dearest(groups):
    """Groups dearest first, as a listing orders them: cost, then tokens, then key."""
    return sorted(
        groups.items(),
        key=lambda item: (
            -item[1]["cost_usd"],
            -sum(item[1][kind] for kind in KINDS),
            tuple("" if value is None else value for value in item[0]),
        ),
    )


@pytest.mark.parametrize("keys", [("user",), ("user", "agent"), ("model",), ("hour",), ("day",)])
def test_a_listing_is_the_ledgers_groups_in_order_cut_at_its_limit_and_counted(ledger, keys):
    rng = random.Random(len(keys) + 10)
    by = "key" if keys[0] in ("day", "hour") else "cost"
    for _ in range(12):
        start = T0 + timedelta(seconds=rng.randrange(2 * 86_400), microseconds=7)
        end = start + timedelta(seconds=rng.randrange(1, 2 * 86_400))
        limit = rng.choice([None, 1, 2, 3])
        (listed,) = usage_listed(
            user_ids=None,
            start=start,
            end=end,
            listings=[Listing(keys, limit=limit, by=by)],
        )
        want = expected(start, end, keys if keys != ("hour",) else ("hour",))
        for sums in want.values():
            sums["cost_usd"] = sums["cost_usd"].quantize(Decimal("0.00000001"))
        ordered = sorted(want.items()) if by == "key" else dearest(want)
        assert listed.groups == len(want)
        assert listed.rows == ordered[:limit]


def test_listings_share_one_statement_and_keep_their_own_order_and_filter(
    ledger, django_assert_num_queries
):
    _user, bob = ledger
    start = T0 - timedelta(days=20, minutes=-17)
    end = T0 + timedelta(days=3, hours=5, minutes=31)
    with django_assert_num_queries(1):
        users, agents, table = usage_listed(
            user_ids=None,
            start=start,
            end=end,
            listings=[
                Listing(("user",), limit=1),
                Listing(("user", "agent"), limit=8, agents_only=True),
                Listing(("user", "agent")),
            ],
        )
    by_agent = dearest(expected(start, end, ("user", "agent")))
    assert users.rows == dearest(expected(start, end, ("user",)))[:1] and users.groups == 2
    assert agents.rows == [item for item in by_agent if item[0][1] is not None]
    assert table.rows == by_agent and table.groups == len(by_agent) > len(agents.rows)
    (mine,) = usage_listed(
        user_ids=[bob.pk], start=start, end=end, listings=[Listing(("user", "agent"))]
    )
    assert mine.rows == [item for item in by_agent if item[0][0] == bob.pk]
    (costs,) = usage_listed(
        user_ids=None,
        start=start,
        end=end,
        listings=[Listing(("user", "agent"))],
        amounts=("cost_usd",),
    )
    assert costs.rows == [(key, {"cost_usd": sums["cost_usd"]}) for key, sums in by_agent]
    with pytest.raises(ValueError, match="cost_usd"):
        usage_listed(
            user_ids=None,
            start=start,
            end=end,
            listings=[Listing(("user",))],
            amounts=("requests",),
        )


def test_a_range_within_an_hour_or_across_one_reads_the_ledger_by_its_hours(ledger):
    calls = UsageRecord.objects.order_by("created_at")
    first = calls[10].created_at
    for start, end in (
        (first - timedelta(minutes=1), first + timedelta(minutes=1)),
        # From half past the hour before the first call's to just after it: across an hour.
        (first.replace(minute=0, second=0) - timedelta(minutes=30), first + timedelta(seconds=1)),
    ):
        (listed,) = usage_listed(
            user_ids=None, start=start, end=end, listings=[Listing(("hour",), by="key")]
        )
        want = sorted(
            (key, sums["requests"]) for key, sums in expected(start, end, ("hour",)).items()
        )
        assert [(key, sums["requests"]) for key, sums in listed.rows] == want
        grouped = usage_grouped(user_ids=None, start=start, end=end, keys=("hour",))
        assert sorted((key, sums["requests"]) for key, sums in grouped.items()) == want


def test_the_first_hours_of_a_range_in_order_cut_at_a_limit_and_counted(ledger):
    user, _bob = ledger
    rng = random.Random(5)
    for n in range(16):
        start = T0 + timedelta(seconds=rng.randrange(2 * 86_400), microseconds=7)
        end = start + timedelta(seconds=rng.randrange(1, 2 * 86_400))
        limit = rng.choice([None, 1, 2, 5])
        user_ids = [user.pk] if n % 3 == 0 else None
        got = usage_hours(user_ids=user_ids, start=start, end=end, limit=limit)
        want = expected(start, end, ("hour",), user_ids=user_ids)
        for sums in want.values():
            sums["cost_usd"] = sums["cost_usd"].quantize(Decimal("0.00000001"))
        assert got.groups == len(want)
        assert got.rows == sorted(want.items())[:limit]


@pytest.mark.parametrize("time_key", ["day", "hour"])
def test_listings_by_time_and_by_model_in_one_statement(ledger, time_key):
    start = T0 + timedelta(hours=5, minutes=3)
    end = T0 + timedelta(days=3, hours=2, minutes=41)
    by_time, by_model = usage_listed(
        user_ids=None,
        start=start,
        end=end,
        listings=[Listing((time_key,), limit=3, by="key"), Listing(("model",))],
    )
    want = {keys: expected(start, end, keys) for keys in ((time_key,), ("model",))}
    for groups in want.values():
        for sums in groups.values():
            sums["cost_usd"] = sums["cost_usd"].quantize(Decimal("0.00000001"))
    assert by_time.rows == sorted(want[(time_key,)].items())[:3]
    assert by_time.groups == len(want[(time_key,)])
    assert by_model.rows == dearest(want[("model",)])
