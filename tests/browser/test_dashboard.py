"""An operator runs the fleet from the dashboard in a real browser: the overview refreshes by
itself, the agent list filters and stops an agent, a scaling rule is edited inline (an error
first, then a fix), paused and simulated (saved, and as an unsaved edit), the decision timeline
and the audit log read back what happened.
Every page is saved as a screenshot at desktop and phone widths."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import Agent
from agents.services import lifecycle
from scaling.models import ScalingDecision, ScalingRule
from tests.browser.conftest import PHONE

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def fleet(make_user):
    """An operator, two users, a booted agent and a few recorded ones, a scaling rule with its
    decisions."""
    operator = make_user("olivia", is_staff=True)
    alice, bob = make_user("alice"), make_user("bob")
    booted = lifecycle.agent_spawn(owner=alice, name="support-bot")  # boots for real
    booted.refresh_from_db()
    assert booted.status == "running", booted.last_error
    for name, owner, status, model in [
        ("batch-runner", bob, "stopped", "claude-haiku-4-5"),
        ("crashed-probe", bob, "failed", "claude-sonnet-5-5"),
        ("night-digest", alice, "stopped", "claude-sonnet-5-5"),
    ]:
        Agent.objects.create(
            owner=owner,
            name=name,
            status=status,
            model=model,
            last_error="sandbox exited with status 1" if status == "failed" else "",
        )
    rule = ScalingRule.objects.create(
        name="support-pool",
        model="claude-sonnet-5-5",
        system_prompt="You answer support questions.",
        min_agents=2,
        max_agents=100,
        target_sessions_per_agent=20,
    )
    ScalingRule.objects.create(
        name="batch-pool", model="claude-haiku-4-5", min_agents=0, max_agents=40, enabled=False
    )
    now = timezone.now()
    for minutes, current, desired, action, reason, utilization in [
        (30, 2, 4, "scale_up", "utilization 0.95 is above 0.80: +2 agents", "0.95"),
        (20, 4, 4, "hold", "utilization 0.62 is between 0.30 and 0.80", "0.62"),
        (10, 4, 3, "scale_down", "utilization 0.21 is below 0.30: -1 agent", "0.21"),
    ]:
        ScalingDecision.objects.create(
            rule=rule,
            created_at=now - timedelta(minutes=minutes),
            current_agents=current,
            desired_agents=desired,
            observed_sessions=int(Decimal(utilization) * current * 20),
            utilization=Decimal(utilization),
            action=action,
            reason=reason,
            inputs={"sessions": int(Decimal(utilization) * current * 20), "agents": current},
        )
    return {"operator": operator, "alice": alice, "booted": booted, "rule": rule}


def _no_sideways_scroll(page) -> None:  # type: ignore[no-untyped-def]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"{page.url} scrolls sideways ({width}px)"


def test_an_operator_runs_the_fleet_from_the_dashboard(page, log_in, fleet, screenshot):
    log_in(page, fleet["operator"])
    booted: Agent = fleet["booted"]

    # The overview refreshes by itself: a new agent shows up without a reload.
    page.goto("/dashboard/")
    active = page.locator('[data-stat="active-agents"]')
    expect(active).to_have_text("1")
    expect(page.get_by_text("utilization 0.21 is below 0.30")).to_be_visible()
    Agent.objects.create(owner=fleet["alice"], name="fresh", status="starting", model="m")
    expect(active).to_have_text("2", timeout=15_000)
    screenshot(page, "overview")

    # The agent list filters without a reload, and the address keeps the filter.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Agents").click()
    page.wait_for_url("**/dashboard/agents/")
    rows = page.locator("#agent-table tbody tr")
    expect(rows).to_have_count(5)
    page.select_option("#f-status", "stopped")
    expect(rows).to_have_count(2)
    expect(page).to_have_url(re.compile(r"status=stopped"))
    page.fill("#f-q", "batch")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("batch-runner")
    page.fill("#f-q", "")
    page.select_option("#f-status", "")
    expect(rows).to_have_count(5)
    screenshot(page, "agents")

    # Its logs, in a dialog.
    row = page.locator(f"#agent-{booted.pk}")
    row.get_by_role("button", name="Logs").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("Logs of support-bot")
    # Read as lines with a time and a level, not as raw JSON.
    lines = dialog.locator(".log-line")
    expect(lines.first).to_be_visible()
    expect(dialog.locator(".log-level").first).to_have_text(re.compile(r"^[A-Z]+$"))
    assert not [t for t in lines.all_inner_texts() if t.lstrip().startswith("{")]
    screenshot(page, "agent-logs")
    dialog.get_by_role("button", name="Close").click()
    expect(page.locator("dialog")).to_have_count(0)

    # Stop the running agent: its row changes in place, a toast says so.
    row.get_by_role("button", name="Stop").click()
    expect(row.locator(".badge")).to_have_text(re.compile("stopp"))
    expect(page.locator(".toast")).to_contain_text("Agent support-bot is stopping.")
    booted.refresh_from_db()
    assert booted.status in ("stopping", "stopped")

    # Scaling: an inline edit with an error, then the fix; pause the rule.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Scaling").click()
    rule: ScalingRule = fleet["rule"]
    rule_row = page.locator(f"#rule-{rule.pk}")
    rule_row.get_by_role("button", name="Edit").click()
    page.fill(f"#rule-{rule.pk} [name=min_agents]", "500")
    page.locator(f"#rule-{rule.pk}").get_by_role("button", name="Save").click()
    expect(page.locator(f"#rule-{rule.pk} .errorlist")).to_contain_text(
        "must not exceed max_agents (100)"
    )
    screenshot(page, "rule-error")
    rule.refresh_from_db()
    assert rule.min_agents == 2
    page.fill(f"#rule-{rule.pk} [name=min_agents]", "5")
    page.locator(f"#rule-{rule.pk}").get_by_role("button", name="Save").click()
    expect(rule_row).to_contain_text("5\u2013100")
    expect(page.locator(".toast").last).to_contain_text("Rule support-pool saved.")
    rule_row.get_by_role("button", name="Pause").click()
    expect(rule_row.locator(".badge")).to_have_text("paused")
    rule.refresh_from_db()
    assert rule.min_agents == 5 and not rule.enabled
    screenshot(page, "scaling")

    # Simulate the rule: a day's load replayed through it, drawn as a chart.
    rule_row.get_by_role("button", name="Simulate").click()
    dialog = page.locator("dialog[open]")
    expect(dialog.locator("svg")).to_be_visible()
    expect(dialog).to_contain_text("Peak agents")
    page.select_option("#id_sim-shape", "spike")
    dialog.get_by_role("button", name="Run").click()
    expect(dialog.locator("#sim-result svg")).to_be_visible()
    screenshot(page, "simulation")
    dialog.get_by_role("button", name="Close").click()
    expect(page.locator("dialog")).to_have_count(0)

    # And an edit before it is saved: the unsaved values are simulated, nothing is written.
    rule_row.get_by_role("button", name="Edit").click()
    page.fill(f"#rule-{rule.pk} [name=max_agents]", "300")
    page.locator(f"#rule-{rule.pk}").get_by_role("button", name="Simulate").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("unsaved")
    expect(dialog.locator("svg")).to_be_visible()
    dialog.get_by_role("button", name="Close").click()
    page.locator(f"#rule-{rule.pk}").get_by_role("button", name="Cancel").click()
    expect(rule_row).to_contain_text("5\u2013100")
    rule.refresh_from_db()
    assert rule.max_agents == 100

    # The decision timeline, by rule.
    page.goto("/dashboard/scaling/decisions/")
    decisions = page.locator("#decision-list .decision")
    expect(decisions).to_have_count(3)
    expect(decisions.first).to_contain_text("utilization 0.21 is below 0.30")
    page.select_option("#f-rule", str(rule.pk))
    expect(page).to_have_url(re.compile(rf"rule={rule.pk}"))
    decisions.first.locator("summary").click()
    screenshot(page, "decisions")

    # The audit log holds the stop, the edit and the pause, with the values before and after.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    table = page.locator("#audit-list")
    expect(table).to_contain_text("scalingrule.pause")
    expect(table).to_contain_text("scalingrule.change")
    expect(table).to_contain_text("agent.stop")
    expect(table.locator("ins").first).to_be_visible()
    screenshot(page, "audit")


PAGES = {
    "home": "/",
    "overview": "/dashboard/",
    "agents": "/dashboard/agents/",
    "scaling": "/dashboard/scaling/",
    "decisions": "/dashboard/scaling/decisions/",
    "audit": "/dashboard/audit/",
}


@pytest.mark.parametrize("path", PAGES.values(), ids=PAGES.keys())
def test_the_dashboard_fits_a_phone(new_page, log_in, fleet, screenshot, path):
    page = new_page(viewport=PHONE)
    log_in(page, fleet["operator"])
    page.goto(path)
    _no_sideways_scroll(page)
    screenshot(page, "phone")
    # The menu folds away behind a button and opens on a tap.
    nav = page.get_by_role("navigation", name="Main")
    expect(nav).to_be_hidden()
    page.locator(".nav-toggle-label").click()
    expect(nav).to_be_visible()
