"""The operator dashboard: who may see it, pages and their htmx fragments, the actions it takes
through the services (and the audit log), inline edits of scaling rules, and query counts."""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from agents.models import Agent, Session
from console.models import AuditEvent, User
from dashboard.selectors import fleet_overview
from scaling.models import ScalingDecision, ScalingRule
from tests.console.services.test_limits import seed_counts

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
HX_BOOSTED = {"HTTP_HX_REQUEST": "true", "HTTP_HX_BOOSTED": "true"}
_numbers = itertools.count(1)

PAGES = [
    "dashboard:overview",
    "dashboard:agents",
    "dashboard:scaling",
    "dashboard:decisions",
    "dashboard:audit",
]


def _agent(owner: User | None, **fields) -> Agent:
    fields.setdefault("model", "claude-sonnet-5-5")
    fields.setdefault("status", Agent.Status.RUNNING)
    fields.setdefault("sandbox_id", str(uuid.uuid4()))
    return Agent.objects.create(owner=owner, **fields)


def _rule(**fields) -> ScalingRule:
    n = next(_numbers)
    fields.setdefault("name", f"pool-{n}")
    fields.setdefault("model", "claude-sonnet-5-5")
    fields.setdefault("system_prompt", f"Template {n}.")
    return ScalingRule.objects.create(**fields)


def _decision(rule: ScalingRule, **fields) -> ScalingDecision:
    fields.setdefault("current_agents", 10)
    fields.setdefault("desired_agents", 12)
    fields.setdefault("observed_sessions", 950)
    fields.setdefault("utilization", Decimal("0.95"))
    fields.setdefault("action", ScalingDecision.Action.SCALE_UP)
    fields.setdefault("reason", "utilization 0.95 is above 0.80")
    return ScalingDecision.objects.create(rule=rule, **fields)


@pytest.fixture
def staff(client, operator):
    client.force_login(operator)
    return client


def _rule_post(rule: ScalingRule, **changes) -> dict[str, object]:
    """The edit form as the browser posts it: every field, with ``changes``."""
    from dashboard.forms import ScalingRuleForm

    data: dict[str, object] = {}
    for name in ScalingRuleForm.Meta.fields:
        value = getattr(rule, name)
        if isinstance(value, bool):
            if value:
                data[name] = "on"
            continue
        data[name] = "" if value is None else str(value)
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return data


# --- Who may see it -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_anonymous_visitors_are_sent_to_log_in(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert "login" in response["Location"]


@pytest.mark.parametrize("name", PAGES)
def test_users_who_are_not_operators_are_refused(client, user, name):
    client.force_login(user)
    assert client.get(reverse(name)).status_code == 403


def test_actions_are_refused_to_users_who_are_not_operators(client, user, outsider):
    agent = _agent(outsider)
    rule = _rule()
    client.force_login(user)
    for url in (
        reverse("dashboard:agent-action", args=[agent.pk, "stop"]),
        reverse("dashboard:rule-toggle", args=[rule.pk]),
        reverse("dashboard:rule-delete", args=[rule.pk]),
        reverse("dashboard:rule-edit", args=[rule.pk]),
    ):
        assert client.post(url, **HX).status_code == 403
    agent.refresh_from_db()
    rule.refresh_from_db()
    assert agent.status == "running" and rule.enabled
    assert not AuditEvent.objects.exists()


# --- Pages and fragments ------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_a_page_is_whole_and_its_htmx_fragment_is_not(staff, name):
    page = staff.get(reverse(name))
    assert page.status_code == 200
    assert b"<html" in page.content and b"htmx.min.js" in page.content
    fragment = staff.get(reverse(name), **HX)
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content
    boosted = staff.get(reverse(name), **HX_BOOSTED)
    assert b"<html" in boosted.content  # a boosted navigation wants the page


def test_the_overview_refreshes_itself_and_shows_the_fleet(staff, user, settings):
    _agent(user, name="busy")
    _agent(user, status=Agent.Status.FAILED)
    _agent(user, status=Agent.Status.STOPPED)
    agent = Agent.objects.first()
    Session.objects.create(agent=agent, user=user)
    rule = _rule(name="chat-pool")
    _decision(rule, reason="utilization 0.95 is above 0.80")
    html = staff.get(reverse("dashboard:overview"), **HX).content.decode()
    assert 'hx-trigger="every 5s"' in html
    assert 'data-stat="active-agents">1<' in html
    assert 'data-stat="open-sessions">1<' in html
    assert settings.SANDBOX_HOST_NAME in html  # the registered host, with its capacity
    assert "utilization 0.95 is above 0.80" in html and "chat-pool" in html


def test_the_overview_reads_the_request_rate(user):
    now = datetime(2026, 11, 21, 12, 30, 20, tzinfo=UTC)
    minute = now.replace(second=0)
    seed_counts(f"user:{user.pk}", minute - timedelta(minutes=1), requests=42)
    seed_counts("key:7", minute - timedelta(minutes=1), requests=40)
    seed_counts(f"user:{user.pk}", minute, requests=5)
    overview = fleet_overview(now=now)
    assert overview["requests_last_minute"] == 42  # a key's own counter is not counted twice
    assert overview["requests_this_minute"] == 5
    assert overview["today"]["requests"] == 0


def test_the_overview_says_which_minute_its_request_count_is(staff):
    html = staff.get(reverse("dashboard:overview"), **HX).content.decode()
    assert "API requests / min" in html
    assert "in the last full minute; 0 so far in this one" in html


def test_the_overview_takes_the_same_queries_however_big_the_fleet(
    staff, user, django_assert_num_queries
):
    def count() -> int:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as queries:
            assert staff.get(reverse("dashboard:overview"), **HX).status_code == 200
        return len(queries)

    _rule()
    small = count()
    for n in range(20):
        agent = _agent(user, name=f"a{n}")
        Session.objects.create(agent=agent, user=user)
    for rule in (_rule(), _rule()):
        for _ in range(5):
            _decision(rule)
    assert count() == small
    # session, user, then: agents by status, sessions, request rate, usage (roll-up and the
    # hour under way), hosts and their load, decisions with their rules.
    with django_assert_num_queries(small):
        staff.get(reverse("dashboard:overview"), **HX)


def test_a_fragment_url_visited_plainly_leads_to_its_page(staff, user):
    rule = _rule()
    agent = _agent(user)
    for url, page in [
        (reverse("dashboard:rule-edit", args=[rule.pk]), reverse("dashboard:scaling")),
        (reverse("dashboard:rule-create"), reverse("dashboard:scaling")),
        (reverse("dashboard:agent-logs", args=[agent.pk]), reverse("dashboard:agents")),
    ]:
        response = staff.get(url)
        assert response.status_code == 302 and response["Location"] == page


# --- Agents -------------------------------------------------------------------------------------


def test_the_agent_list_filters_by_status_model_owner_and_name(staff, user, outsider):
    _agent(user, name="alpha-one")
    _agent(user, name="alpha-two", status=Agent.Status.STOPPED)
    _agent(outsider, name="beta", model="claude-haiku-4-5")
    _agent(user, name="gone", deleted_at=datetime.now(UTC))

    def names(**query) -> set[str]:
        html = staff.get(reverse("dashboard:agents"), query, **HX).content.decode()
        return {n for n in ("alpha-one", "alpha-two", "beta", "gone") if f">{n}<" in html}

    assert names() == {"alpha-one", "alpha-two", "beta"}
    assert names(status="stopped") == {"alpha-two"}
    assert names(model="claude-haiku-4-5") == {"beta"}
    assert names(owner=outsider.username) == {"beta"}
    assert names(q="alpha") == {"alpha-one", "alpha-two"}
    assert names(q="nothing") == set()


def test_the_agent_list_pages_and_takes_fixed_queries(staff, user, django_assert_num_queries):
    from dashboard.views import AGENTS_PER_PAGE

    for n in range(AGENTS_PER_PAGE + 3):
        _agent(user, name=f"agent-{n:03d}")
    first = staff.get(reverse("dashboard:agents"), **HX).content.decode()
    assert first.count('<tr id="agent-') == AGENTS_PER_PAGE
    assert "page=2" in first and "Older" in first
    with django_assert_num_queries(3):  # session, user, one page (with owners and hosts)
        second = staff.get(reverse("dashboard:agents"), {"page": 2}, **HX).content.decode()
    assert second.count('<tr id="agent-') == 3
    assert "Newer" in second and "page=1" in second


def test_stopping_an_agent_answers_with_its_row_and_a_toast(
    staff, user, django_capture_on_commit_callbacks
):
    agent = _agent(user, name="worker")
    with django_capture_on_commit_callbacks() as callbacks:
        response = staff.post(reverse("dashboard:agent-action", args=[agent.pk, "stop"]), **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert f'<tr id="agent-{agent.pk}"' in html
    assert "status-stopping" in html
    assert 'hx-swap-oob="beforeend"' in html and "Agent worker is stopping." in html
    assert len(callbacks) == 1  # the halt task, queued after commit
    agent.refresh_from_db()
    assert agent.status == "stopping"
    event = AuditEvent.objects.get()
    assert event.action == "agent.stop" and event.target_id == str(agent.pk)
    assert event.actor.username == "olivia"


def test_a_running_agent_has_a_pause_button_and_pausing_answers_with_a_resume_button(
    staff, user, django_capture_on_commit_callbacks
):
    agent = _agent(user, name="napper")
    page = staff.get(reverse("dashboard:agents"), **HX).content.decode()
    assert reverse("dashboard:agent-action", args=[agent.pk, "pause"]) in page
    assert reverse("dashboard:agent-action", args=[agent.pk, "resume"]) not in page

    with django_capture_on_commit_callbacks() as callbacks:
        response = staff.post(reverse("dashboard:agent-action", args=[agent.pk, "pause"]), **HX)

    html = response.content.decode()
    assert "status-pausing" in html and "Agent napper is pausing." in html
    assert reverse("dashboard:agent-action", args=[agent.pk, "resume"]) in html
    assert reverse("dashboard:agent-action", args=[agent.pk, "pause"]) not in html
    assert reverse("dashboard:agent-action", args=[agent.pk, "stop"]) in html
    assert len(callbacks) == 1  # the freeze task, queued after commit on the agent's host
    assert AuditEvent.objects.get().action == "agent.pause"
    Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.PAUSED)
    with django_capture_on_commit_callbacks():
        resumed = staff.post(reverse("dashboard:agent-action", args=[agent.pk, "resume"]), **HX)
    assert "Agent napper is resuming." in resumed.content.decode()
    agent.refresh_from_db()
    assert agent.status == "resuming"


def test_a_refused_action_shows_why_and_changes_nothing(staff, user):
    agent = _agent(user, name="idle", status=Agent.Status.STOPPED)
    response = staff.post(reverse("dashboard:agent-action", args=[agent.pk, "stop"]), **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "toast-error" in html and "the agent is stopped" in html
    agent.refresh_from_db()
    assert agent.status == "stopped"
    assert not AuditEvent.objects.exists()


def test_deleting_an_agent_removes_its_row(staff, user, django_capture_on_commit_callbacks):
    agent = _agent(user, name="doomed")
    with django_capture_on_commit_callbacks():
        response = staff.post(reverse("dashboard:agent-action", args=[agent.pk, "delete"]), **HX)
    assert "<tr" not in response.content.decode()
    assert "Agent doomed is deleted" in response.content.decode()
    agent.refresh_from_db()
    assert agent.deleted_at is not None
    assert AuditEvent.objects.get().action == "agent.delete"
    assert (
        staff.post(reverse("dashboard:agent-action", args=[agent.pk, "delete"]), **HX).status_code
        == 404
    )


def test_an_unknown_action_is_not_found(staff, user):
    agent = _agent(user)
    response = staff.post(f"/dashboard/agents/{agent.pk}/explode", **HX)
    assert response.status_code == 404


def test_actions_need_a_post(staff, user):
    agent = _agent(user)
    response = staff.get(reverse("dashboard:agent-action", args=[agent.pk, "stop"]))
    assert response.status_code == 405
    agent.refresh_from_db()
    assert agent.status == "running"


def test_the_logs_dialog_shows_the_runtime_log_tail(staff, user):
    agent = _agent(user, name="quiet", sandbox_id="")
    html = staff.get(reverse("dashboard:agent-logs", args=[agent.pk]), **HX).content.decode()
    assert "<dialog" in html and "Logs of quiet" in html and "No log lines" in html


# --- Scaling rules ------------------------------------------------------------------------------


def test_a_rule_row_becomes_a_form_and_back(staff):
    rule = _rule(name="pool-a")
    form = staff.get(reverse("dashboard:rule-edit", args=[rule.pk]), **HX).content.decode()
    assert f'<tr id="rule-{rule.pk}" class="is-editing"' in form
    assert 'name="scale_up_threshold"' in form
    row = staff.get(reverse("dashboard:rule-row", args=[rule.pk]), **HX).content.decode()
    assert f'<tr id="rule-{rule.pk}">' in row and "<form" not in row


def test_an_invalid_edit_shows_the_errors_in_place_and_saves_nothing(staff, operator):
    rule = _rule(name="pool-b", min_agents=2, max_agents=20)
    response = staff.post(
        reverse("dashboard:rule-edit", args=[rule.pk]),
        _rule_post(rule, min_agents="30", scale_down_threshold="0.9", scale_up_threshold="0.8"),
        **HX,
    )
    assert response.status_code == 422
    html = response.content.decode()
    assert f'<tr id="rule-{rule.pk}" class="is-editing"' in html
    assert "must not exceed max_agents (20)" in html  # ScalingRule.clean, beside its field
    assert "must be below scale_up_threshold" in html
    assert 'value="30"' in html  # what the operator typed stays in the form
    rule.refresh_from_db()
    assert rule.min_agents == 2
    assert not AuditEvent.objects.exists()


def test_a_rule_for_a_pool_that_has_one_is_refused(staff):
    taken = _rule(name="pool-c")
    other = _rule(name="pool-d")
    response = staff.post(
        reverse("dashboard:rule-edit", args=[other.pk]),
        _rule_post(other, system_prompt=taken.system_prompt),
        **HX,
    )
    assert response.status_code == 422
    assert "Another rule already scales this pool" in response.content.decode()


def test_a_valid_edit_is_saved_audited_and_shown(staff, operator):
    rule = _rule(name="pool-e", min_agents=2, max_agents=20)
    response = staff.post(
        reverse("dashboard:rule-edit", args=[rule.pk]),
        _rule_post(rule, max_agents="40", scale_up_threshold="0.75"),
        **HX,
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert f'<tr id="rule-{rule.pk}">' in html and "2&ndash;40" in html
    assert "Rule pool-e saved." in html
    rule.refresh_from_db()
    assert rule.max_agents == 40 and rule.scale_up_threshold == Decimal("0.75")
    event = AuditEvent.objects.get()
    assert event.actor == operator and event.action == "scalingrule.change"
    assert event.changes == {"max_agents": [20, 40], "scale_up_threshold": ["0.8", "0.75"]}


def test_a_rule_names_its_pools_owner_by_username(staff, user):
    rule = _rule(name="pool-owned")
    url = reverse("dashboard:rule-edit", args=[rule.pk])
    response = staff.post(url, _rule_post(rule, owner="nobody"), **HX)
    assert response.status_code == 422
    assert "There is no account with this username." in response.content.decode()
    response = staff.post(url, _rule_post(rule, owner=user.username), **HX)
    assert response.status_code == 200 and f"for {user.username}" in response.content.decode()
    rule.refresh_from_db()
    assert rule.owner == user
    form = staff.get(url, **HX).content.decode()
    assert f'name="owner" value="{user.username}"' in form


def test_pausing_and_enabling_a_rule_is_audited(staff, operator):
    rule = _rule(name="pool-f")
    html = staff.post(reverse("dashboard:rule-toggle", args=[rule.pk]), **HX).content.decode()
    assert "status-paused" in html and ">Enable<" in html and "Rule pool-f paused." in html
    html = staff.post(reverse("dashboard:rule-toggle", args=[rule.pk]), **HX).content.decode()
    assert "status-enabled" in html and ">Pause<" in html
    assert list(AuditEvent.objects.order_by("at", "id").values_list("action", flat=True)) == [
        "scalingrule.pause",
        "scalingrule.enable",
    ]


def test_creating_a_rule_refreshes_the_table(staff, operator):
    empty = staff.get(reverse("dashboard:rule-create"), **HX).content.decode()
    assert 'id="rule-new-form"' in empty
    template = _rule(name="template")
    data = _rule_post(template, name="pool-new", system_prompt="A new pool.")
    response = staff.post(reverse("dashboard:rule-create"), data, **HX)
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#rules"
    assert "pool-new" in response.content.decode()
    created = ScalingRule.objects.get(name="pool-new")
    assert AuditEvent.objects.get(action="scalingrule.create").target_id == str(created.pk)


def test_the_new_rule_form_offers_models_and_says_what_it_boots(staff, settings):
    html = staff.get(reverse("dashboard:rule-create"), **HX).content.decode()

    model = re.search(r'<select name="model"[^>]*>(.*?)</select>', html, re.S)
    assert model, "Model is a list to pick from"
    assert f'<option value="{settings.DEFAULT_AGENT_MODEL}" selected>' in model.group(1)
    assert model.group(1).count("<option") > 3  # the priced models
    assert re.search(r'name="min_agents" value="1"', html)
    assert "boots <strong data-boot-count>1</strong> agent" in html


def test_a_new_rule_saves_on_the_first_submit_with_what_the_form_offers(staff):
    html = staff.get(reverse("dashboard:rule-create"), **HX).content.decode()
    data = dict(re.findall(r'<input type="(?:text|number)" name="(\w+)" value="([^"]*)"', html))
    data.update(name="fresh", model=re.search(r'<option value="([^"]+)" selected>', html)[1])
    for name in ("scale_up_step_unit", "scale_down_step_unit", "on_metrics_failure"):
        select = re.search(rf'<select name="{name}"[^>]*>(.*?)</select>', html, re.S)[1]
        data[name] = re.search(r'<option value="(\w+)" selected>', select)[1]
    data["enabled"] = "on"

    response = staff.post(reverse("dashboard:rule-create"), data, **HX)

    assert response.status_code == 200, response.content.decode()[:2000]
    rule = ScalingRule.objects.get(name="fresh")
    assert (rule.min_agents, rule.max_agents) == (1, 20)


def test_creating_an_invalid_rule_keeps_the_form(staff):
    response = staff.post(reverse("dashboard:rule-create"), {"name": ""}, **HX)
    assert response.status_code == 422
    assert 'id="rule-new-form"' in response.content.decode()
    assert not ScalingRule.objects.exists()


def test_deleting_a_rule_removes_its_row_and_is_audited(staff, operator):
    rule = _rule(name="pool-g")
    response = staff.post(reverse("dashboard:rule-delete", args=[rule.pk]), **HX)
    assert (
        "<tr" not in response.content.decode()
        and "Rule pool-g deleted." in response.content.decode()
    )
    assert not ScalingRule.objects.exists()
    assert AuditEvent.objects.get().action == "scalingrule.delete"


# --- Simulation ---------------------------------------------------------------------------------


def test_simulating_a_saved_rule_draws_its_chart(staff):
    rule = _rule(name="<script>alert(1)</script>", min_agents=2, max_agents=100)
    rule.target_sessions_per_agent = 20
    rule.save()
    response = staff.get(reverse("dashboard:rule-simulate", args=[rule.pk]), **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<dialog" in html and "<svg" in html
    assert "Peak agents" in html and "The moves, with their reasons" in html
    assert "<script>" not in html  # the rule's name is text, in the dialog and in the chart


def test_rerunning_a_simulation_answers_with_the_result_only(staff):
    rule = _rule()
    data = {"sim-shape": "spike", "sim-low": "10", "sim-high": "900", "sim-csv": ""}
    headers = {**HX, "HTTP_HX_TARGET": "sim-result"}
    html = staff.post(
        reverse("dashboard:rule-simulate", args=[rule.pk]), data, **headers
    ).content.decode()
    assert "<dialog" not in html and "<svg" in html


def test_a_bad_trace_is_explained(staff):
    rule = _rule()
    data = {"sim-shape": "csv", "sim-low": "1", "sim-high": "2", "sim-csv": "0,10\n60,lots"}
    headers = {**HX, "HTTP_HX_TARGET": "sim-result"}
    html = staff.post(
        reverse("dashboard:rule-simulate", args=[rule.pk]), data, **headers
    ).content.decode()
    assert "<svg" not in html
    assert "row 2: sessions &#x27;lots&#x27; is not a whole number of sessions" in html


def test_an_unsaved_edit_is_simulated_without_being_saved(staff):
    rule = _rule(name="pool-sim", min_agents=2, max_agents=20)
    data = {**_rule_post(rule, max_agents="60"), "draft_of": str(rule.pk)}
    html = staff.post(reverse("dashboard:rule-simulate-draft"), data, **HX).content.decode()
    assert "<svg" in html and "unsaved" in html
    assert 'name="max_agents" value="60"' in html  # carried along for the next run
    rule.refresh_from_db()
    assert rule.max_agents == 20
    assert not AuditEvent.objects.exists()


def test_an_invalid_draft_is_not_simulated(staff):
    rule = _rule(name="pool-bad", min_agents=2, max_agents=20)
    data = {**_rule_post(rule, min_agents="50"), "draft_of": str(rule.pk)}
    html = staff.post(reverse("dashboard:rule-simulate-draft"), data, **HX).content.decode()
    assert "<svg" not in html
    assert "correct them in its form first" in html and "must not exceed max_agents" in html


# --- Decisions and the audit log ----------------------------------------------------------------


def test_the_timeline_shows_decisions_newest_first_and_filters_by_rule(
    staff, django_assert_num_queries
):
    a, b = _rule(name="pool-h"), _rule(name="pool-i")
    now = datetime.now(UTC)
    _decision(a, reason="first of a", created_at=now - timedelta(minutes=2))
    _decision(b, reason="only of b", created_at=now - timedelta(minutes=1))
    _decision(a, reason="second of a", created_at=now, action="hold", desired_agents=10)
    html = staff.get(reverse("dashboard:decisions"), **HX).content.decode()
    assert html.index("second of a") < html.index("only of b") < html.index("first of a")
    with django_assert_num_queries(3):  # session, user, one page with its rules
        html = staff.get(reverse("dashboard:decisions"), {"rule": a.pk}, **HX).content.decode()
    assert "first of a" in html and "second of a" in html and "only of b" not in html
    assert "10 &rarr; 12 agents" in html and "10 &rarr; 10 agents" in html


def test_the_audit_page_lists_and_filters_events(staff, operator, user):
    rule = _rule(name="pool-j")
    staff.post(reverse("dashboard:rule-toggle", args=[rule.pk]), **HX)
    staff.post(
        reverse("dashboard:rule-edit", args=[rule.pk]), _rule_post(rule, max_agents="99"), **HX
    )
    page = staff.get(reverse("dashboard:audit")).content.decode()
    assert "scalingrule.pause" in page and "scalingrule.change" in page
    assert "<del>1000</del>" in page and "<del>on</del>" in page and "<ins>99</ins>" in page
    assert operator.username in page
    html = staff.get(reverse("dashboard:audit"), {"action": "scalingrule.pause"}, **HX)
    assert "scalingrule.pause" in html.content.decode()
    assert "scalingrule.change" not in html.content.decode()


def test_the_audit_page_pages_with_a_cursor(staff, operator, django_assert_num_queries):
    from console.services import audit_record
    from dashboard.views import AUDIT_PER_PAGE

    rule = _rule(name="pool-k")
    for n in range(AUDIT_PER_PAGE + 2):
        audit_record(actor=operator, action=f"test.{n:03d}", target=rule)
    with django_assert_num_queries(3):  # session, user, one page with its actors
        first = staff.get(reverse("dashboard:audit"), **HX).content.decode()
    assert "test.041" in first and "test.001" not in first
    assert "cursor=" in first
    cursor = first.split("cursor=")[1].split('"')[0]
    from urllib.parse import unquote

    older = staff.get(
        reverse("dashboard:audit"), {"cursor": unquote(cursor)}, **HX
    ).content.decode()
    assert "test.001" in older and "test.000" in older and "test.041" not in older
