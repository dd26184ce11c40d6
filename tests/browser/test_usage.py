"""The usage pages in a real browser: an operator changes the range and the grouping (htmx
swaps the report and the address follows), exports the table, and reads the quota page; a
user sees their own usage only. Every page is saved as a screenshot, at desktop and phone
widths."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import Agent
from console.models import Budget, Quota, Refusal
from console.services import TokenUsage, usage_record
from tests.browser.conftest import PHONE

expect = pytest.importorskip("playwright.sync_api").expect

MODELS = ("claude-sonnet-5-5", "claude-haiku-5-5", "claude-opus-5-5")


@pytest.fixture
def usage(make_user):
    """An operator; Alice and Bob with agents and three weeks of calls; budgets and refusals."""
    operator = make_user("olivia", is_staff=True)
    alice, bob = make_user("alice"), make_user("bob")
    now = timezone.now()
    for owner, names in ((alice, ("support-bot", "night-digest")), (bob, ("batch-runner",))):
        Quota.objects.create(user=owner, max_agents=3)
        for n, name in enumerate(names):
            agent = Agent.objects.create(
                owner=owner,
                name=name,
                model=MODELS[n],
                status="running",
                sandbox_id=str(uuid.uuid4()),
            )
            for hours in range(0, 21 * 24, 5 + n * 3 + (owner == bob) * 2):
                usage_record(
                    user_id=owner.pk,
                    model=MODELS[(hours // 24 + n) % 3],
                    usage=TokenUsage(
                        input_tokens=20_000 + hours * 40,
                        output_tokens=2_000 + hours * 3,
                        cache_read_input_tokens=10_000,
                    ),
                    agent_id=agent.pk,
                    at=now - timedelta(hours=hours, minutes=7),
                )
    Budget.objects.create(
        user=alice, limit=Decimal("40"), used=Decimal("31"), window_started_at=now.replace(day=1)
    )
    Budget.objects.create(
        user=bob,
        limit=Decimal("5"),
        window="day",
        used=Decimal("1"),
        window_started_at=now.replace(hour=0, minute=0),
    )
    minute = now.replace(second=0, microsecond=0)
    Refusal.objects.create(user=bob, limit="usd_per_day", scope="user", minute=minute, count=4)
    Refusal.objects.create(
        user=alice, limit="requests_per_minute", scope="API key", minute=minute, count=12
    )
    return operator, alice, bob


def test_an_operator_changes_range_and_grouping_without_reloading(
    usage, logged_in_page, new_page, log_in, screenshot
):
    operator, _alice, _bob = usage
    page = logged_in_page(operator)
    page.goto("/usage/")
    expect(page.locator("h1")).to_have_text("Usage and cost")
    expect(page.locator(".usage-chart svg rect").first).to_be_visible()
    expect(page.locator("#top-users")).to_be_visible()
    page.evaluate("window.__notReloaded = true")
    screenshot(page, "30-days-by-day")

    page.select_option("#u-range", "7d")
    expect(page).to_have_url(re.compile(r"range=7d"))
    page.select_option("#u-group", "agent")
    expect(page.locator(".usage-table")).to_have_attribute("data-group-by", "agent")
    expect(page.locator(".usage-table tbody tr")).to_have_count(3)
    assert page.evaluate("window.__notReloaded") is True  # htmx swapped, no reload
    assert "group_by=agent" in page.url
    screenshot(page, "7-days-by-agent")

    page.select_option("#u-range", "24h")
    page.select_option("#u-group", "hour")
    expect(page.locator(".usage-table")).to_have_attribute("data-group-by", "hour")
    expect(page.locator("#cost-over-time")).to_have_text("Cost per hour, by model")
    screenshot(page, "24-hours-by-hour")

    with page.expect_download() as download:
        page.click("[data-csv]")
    assert download.value.suggested_filename.endswith("-by-hour.csv")

    page.goto("/usage/quotas/")
    expect(page.locator(".usage-limits tbody tr").first).to_be_visible()
    expect(page.locator(".usage-refusals")).to_contain_text("requests_per_minute")
    screenshot(page, "quotas")

    phone = new_page(viewport=PHONE)
    log_in(phone, operator)
    phone.goto("/usage/?range=7d&group_by=model")
    expect(phone.locator(".usage-table tbody tr").first).to_be_visible()
    screenshot(phone, "phone-7-days-by-model")


def test_a_user_sees_their_own_usage_only(usage, logged_in_page, screenshot):
    _operator, alice, _bob = usage
    page = logged_in_page(alice)
    page.goto("/usage/?group_by=agent")
    expect(page.locator(".usage-table tbody tr")).to_have_count(2)
    expect(page.locator("body")).not_to_contain_text("batch-runner")
    expect(page.locator("#top-users")).to_have_count(0)
    screenshot(page, "alice-by-agent")
    assert page.goto("/usage/quotas/").status == 403
