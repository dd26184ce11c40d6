"""Every page looks finished at a laptop's width (1366 x 900) and a phone's (390 x 844): nothing
wider than the viewport, nothing cut off by its container, chart labels apart and readable.
At 1366 px nothing even needs a sideways scroll; on a phone a wide table may scroll inside its
wrapper. Each page is saved as a screenshot under var/screenshots/."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import Agent, Session
from console.models import Budget, Quota
from console.services import TokenUsage, usage_record
from operator_agent.models import OperatorAction, OperatorRun
from operator_agent.services import operator_agent_create
from scaling.models import ScalingDecision, ScalingRule
from tests.browser.layout import assert_finished

expect = pytest.importorskip("playwright.sync_api").expect

LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
VIEWPORTS = {"laptop": LAPTOP, "phone": PHONE}


@pytest.fixture
def console_data(make_user):
    """An operator and a user with agents, a chat, usage, budgets, rules and decisions: what
    the pages show on an ordinary day. Nothing is booted."""
    operator = make_user("olivia", is_staff=True, is_superuser=True)
    alice = make_user("alice")
    Quota.objects.create(user=alice, max_agents=5)
    now = timezone.now()
    agents = []
    for name, status, model in [
        ("support-bot", "running", "claude-sonnet-5-5"),
        ("night-digest-with-a-rather-long-name", "stopped", "claude-haiku-4-5"),
        ("crashed-probe", "failed", "claude-sonnet-5-5"),
    ]:
        agents.append(
            Agent.objects.create(
                owner=alice,
                name=name,
                status=status,
                model=model,
                sandbox_id=str(uuid.uuid4()),
                last_error="sandbox exited with status 1" if status == "failed" else "",
            )
        )
    session = Session.objects.create(agent=agents[0], user=alice, title="Where is my order?")
    for hours in range(0, 7 * 24, 7):
        usage_record(
            user_id=alice.pk,
            model="claude-sonnet-5-5",
            usage=TokenUsage(input_tokens=20_000 + hours * 40, output_tokens=2_000 + hours),
            agent_id=agents[hours % 2].pk,
            at=now - timedelta(hours=hours, minutes=3),
        )
    Budget.objects.create(
        user=alice, limit=Decimal("40"), used=Decimal("31"), window_started_at=now.replace(day=1)
    )
    rule = ScalingRule.objects.create(
        name="support-pool-for-the-night-shift",
        model="claude-sonnet-5-5",
        system_prompt="You answer support questions politely and briefly, in the user's language.",
        min_agents=1,
        max_agents=100,
        target_sessions_per_agent=20,
    )
    ScalingRule.objects.create(
        name="batch-pool", model="claude-haiku-4-5", min_agents=0, max_agents=40, enabled=False
    )
    for minutes, current, desired, action, reason in [
        (30, 2, 4, "scale_up", "32 sessions on 2 agents at 20 per agent: utilization 0.80."),
        (10, 1, 1, "hold", "0 sessions on 1 agent. Limited: the rule's minimum is 1."),
    ]:
        ScalingDecision.objects.create(
            rule=rule,
            created_at=now - timedelta(minutes=minutes),
            current_agents=current,
            desired_agents=desired,
            observed_sessions=current * 10,
            utilization=Decimal("0.5"),
            action=action,
            reason=reason,
            inputs={"sessions": current * 10, "agents": current},
        )
    watcher = operator_agent_create(
        values={
            "name": "fleet-watcher",
            "instructions": "Keep the fleet healthy; stop agents idle for a day.",
            "model": "claude-sonnet-5-5",
            "enabled": True,
            "daily_usd_cap": Decimal("5"),
            "allowed_tools": ["fleet_stats", "agents_list", "agent_stop"],
        },
        admin=False,
        actor=operator,
    )
    run = OperatorRun.objects.create(
        agent=watcher, trigger="schedule", status="waiting_approval", cost_usd=Decimal("0.0123")
    )
    OperatorAction.objects.create(
        run=run,
        tool_use_id="toolu_1",
        tool="fleet_stats",
        reasoning="First, how the fleet stands.",
        status="executed",
        result={"total_agents": 3, "scope": "fleet"},
    )
    OperatorAction.objects.create(
        run=run,
        tool_use_id="toolu_2",
        tool="agent_stop",
        arguments={"agent_id": str(agents[1].pk)},
        reasoning="The night digest has been idle for two days; stopping it saves its cost.",
        status="pending_approval",
        approval_reason="agent_stop is destructive",
        cost_impact_usd_per_hour=Decimal("-0.5"),
        expires_at=now + timedelta(hours=1),
    )
    return {
        "operator": operator,
        "alice": alice,
        "session": session,
        "rule": rule,
        "operator_agent": watcher,
    }


MISSING: dict[int, list[str]] = {}


def _watch(page):  # type: ignore[no-untyped-def]
    """Remember every 404 the page asks for (a favicon it lacks, a missing script)."""
    missing = MISSING.setdefault(id(page), [])
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    return page


def _open(new_page, log_in, who, viewport):  # type: ignore[no-untyped-def]
    page = _watch(new_page(viewport=viewport))
    if who is not None:
        log_in(page, who)
    return page


def _check(page, screenshot, name: str, viewport: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_load_state("networkidle")
    screenshot(page, name)
    assert not MISSING.get(id(page)), f"{page.url} asked for missing files: {MISSING[id(page)]}"
    icon = page.evaluate("document.querySelector('link[rel~=icon]')?.href")
    assert icon and page.request.get(icon).ok, f"{page.url} has no favicon"
    assert_finished(page, scrolling=viewport is PHONE)


OPERATOR_PAGES = {
    "home": "/",
    "overview": "/dashboard/",
    "agents": "/dashboard/agents/",
    "scaling": "/dashboard/scaling/",
    "decisions": "/dashboard/scaling/decisions/",
    "audit": "/dashboard/audit/",
    "operators": "/operators/",
    "operator-agent": "/operators/{operator_agent}/",
    "operator-new": "/operators/new",
    "approvals": "/operators/approvals",
    "usage": "/usage/?range=7d",
    "quotas": "/usage/quotas/",
    "admin": "/admin/",
    "admin-rules": "/admin/scaling/scalingrule/",
    "api-docs": "/api/docs/",
}


@pytest.mark.parametrize("size", VIEWPORTS, ids=VIEWPORTS.keys())
@pytest.mark.parametrize("name", OPERATOR_PAGES, ids=OPERATOR_PAGES.keys())
def test_an_operators_page_looks_finished(new_page, log_in, console_data, screenshot, name, size):
    page = _open(new_page, log_in, console_data["operator"], VIEWPORTS[size])
    page.goto(OPERATOR_PAGES[name].format(operator_agent=console_data["operator_agent"].pk))
    _check(page, screenshot, f"{name}-{size}", VIEWPORTS[size])


@pytest.mark.parametrize("size", VIEWPORTS, ids=VIEWPORTS.keys())
def test_an_admin_change_form_looks_finished(new_page, log_in, console_data, screenshot, size):
    page = _open(new_page, log_in, console_data["operator"], VIEWPORTS[size])
    page.goto(f"/admin/scaling/scalingrule/{console_data['rule'].pk}/change/")
    expect(page.locator("#content h1, #content h2").first).to_be_visible()
    _check(page, screenshot, f"admin-change-{size}", VIEWPORTS[size])


@pytest.mark.parametrize("size", VIEWPORTS, ids=VIEWPORTS.keys())
def test_the_login_pages_look_finished(new_page, screenshot, size, console_data):
    page = _watch(new_page(viewport=VIEWPORTS[size]))
    page.goto("/accounts/login/")
    _check(page, screenshot, f"login-{size}", VIEWPORTS[size])
    page.goto("/admin/login/")
    _check(page, screenshot, f"admin-login-{size}", VIEWPORTS[size])


@pytest.mark.parametrize("size", VIEWPORTS, ids=VIEWPORTS.keys())
def test_a_users_pages_look_finished(new_page, log_in, console_data, screenshot, size):
    page = _open(new_page, log_in, console_data["alice"], VIEWPORTS[size])
    for name, path in [
        ("home", "/"),
        ("chat", "/chat/"),
        ("chat-session", f"/chat/{console_data['session'].pk}"),
        ("usage", "/usage/?range=7d"),
    ]:
        page.goto(path)
        _check(page, screenshot, f"{name}-{size}", VIEWPORTS[size])


@pytest.mark.parametrize("size", VIEWPORTS, ids=VIEWPORTS.keys())
def test_the_scaling_dialogs_and_forms_look_finished(
    new_page, log_in, console_data, screenshot, size
):
    page = _open(new_page, log_in, console_data["operator"], VIEWPORTS[size])
    rule = console_data["rule"]
    page.goto("/dashboard/scaling/")
    page.get_by_role("button", name="New rule").click()
    expect(page.locator("#rule-new form")).to_be_visible()
    # Model is picked from a list, and the form says what it would boot as it is edited.
    assert page.locator("#rule-new select[name=model] option").count() > 3
    note = page.locator("[data-boot-note]")
    assert "boots 1 agent for this pool" in note.inner_text()
    page.fill("#rule-new [name=min_agents]", "3")
    expect(note.locator("[data-boot-count]")).to_have_text("3")
    assert "boots 3 agents for this pool" in note.inner_text()
    _check(page, screenshot, f"new-rule-{size}", VIEWPORTS[size])
    page.locator("#rule-new").get_by_role("button", name="Cancel").click()

    row = page.locator(f"#rule-{rule.pk}")
    row.get_by_role("button", name="Edit").click()
    expect(page.locator(f"#rule-{rule.pk} form")).to_be_visible()
    _check(page, screenshot, f"edit-rule-{size}", VIEWPORTS[size])
    page.locator(f"#rule-{rule.pk}").get_by_role("button", name="Cancel").click()

    row.get_by_role("button", name="Simulate").click()
    dialog = page.locator("dialog[open]")
    expect(dialog.locator("svg")).to_be_visible()
    _check(page, screenshot, f"simulation-{size}", VIEWPORTS[size])
