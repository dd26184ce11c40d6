"""The operator agents' pages, their REST routes and MCP tools: creating and editing an agent
(its account and cap follow), run now, approvals listed and decided, and the beat task that
starts the runs that are due."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from celery import current_app
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent
from autopilot.loop import cost_impact
from autopilot.tasks import operators_due
from console.models import AuditEvent, Budget
from console.services import TokenUsage, usage_record
from mcpserver.server import tool_run
from mcpserver.services import Caller
from mcpserver.tools import TOOLS
from operator_agent.models import OperatorAction, OperatorAgent, OperatorRun
from operator_agent.services import (
    CONTINUE_TASK,
    operator_action_decide,
    operator_run_save,
    operator_run_start,
)
from plumbing.errors import Conflict, Forbidden

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def _pending(agent, **fields) -> OperatorAction:
    run = OperatorRun.objects.create(agent=agent, trigger="test", status="waiting_approval")
    fields.setdefault("expires_at", timezone.now() + timedelta(hours=1))
    return OperatorAction.objects.create(
        run=run,
        tool_use_id="toolu_1",
        tool="agent_stop",
        arguments={"agent_id": "x"},
        reasoning="It has been idle for days.",
        status=OperatorAction.Status.PENDING,
        approval_reason="agent_stop is destructive",
        **fields,
    )


def test_an_operator_creates_an_agent_with_its_account_and_cap(client, operator):
    client.force_login(operator)
    form = {
        "name": "night watch",
        "model": "claude-sonnet-5-5",
        "instructions": "Stop idle agents.",
        "every_minutes": "15",
        "enabled": "on",
        "daily_usd_cap": "3.50",
        "tool_calls_per_minute": "5",
        "spawn_approval_over": "0",
        "cost_approval_over_usd_per_hour": "1",
        "allowed_tools": ["agents_list", "hosts"],
    }

    response = client.post(reverse("autopilot:agent-create"), form)

    agent = OperatorAgent.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("autopilot:agent", args=[agent.pk])
    assert agent.allowed_tools == ["agents_list", "hosts"]
    assert agent.user.username == "operator-night-watch"
    assert agent.user.is_staff  # hosts is for operators
    assert not agent.user.has_usable_password()
    budget = Budget.objects.get(user=agent.user)
    assert (budget.metric, budget.window, budget.limit) == ("usd", "day", Decimal("3.5"))
    assert AuditEvent.objects.filter(action="operatoragent.create", actor=operator).exists()

    form |= {"daily_usd_cap": "1", "allowed_tools": ["agents_list"]}
    client.post(reverse("autopilot:agent", args=[agent.pk]), form)

    budget.refresh_from_db()
    agent.user.refresh_from_db()
    assert budget.limit == Decimal("1")
    assert not agent.user.is_staff


def test_the_approval_tools_are_never_an_operator_agents(client, operator):
    client.force_login(operator)

    response = client.get(reverse("autopilot:agent-create"))

    assert b"agent_stop" in response.content
    assert b"operator_decide" not in response.content
    assert b"operator_approvals" not in response.content


def test_the_pages_show_agents_spend_runs_and_approvals(
    client, operator, make_operator_agent, django_assert_max_num_queries
):
    agent = make_operator_agent(["agent_stop"])
    Budget.objects.filter(user=agent.user).update(used=Decimal("1.25"))
    action = _pending(agent)
    client.force_login(operator)

    with django_assert_max_num_queries(12):
        listing = client.get(reverse("autopilot:agents"))
    page = client.get(reverse("autopilot:agent", args=[agent.pk]))
    fragment = client.get(reverse("autopilot:approvals"), **HX)

    assert listing.status_code == page.status_code == fragment.status_code == 200
    assert b"$1.25 of $5.00" in listing.content
    assert b"It has been idle for days." in listing.content
    assert reverse("autopilot:action-decide", args=[action.pk, "approve"]).encode() in (
        listing.content
    )
    assert b"pending approval" in page.content
    assert b"<html" not in fragment.content and b"agent_stop is destructive" in fragment.content


def test_approving_on_the_dashboard_resumes_the_run(
    client, operator, make_operator_agent, django_capture_on_commit_callbacks
):
    action = _pending(make_operator_agent(["agent_stop"]))
    client.force_login(operator)

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            reverse("autopilot:action-decide", args=[action.pk, "approve"]), **HX
        )

    assert response.status_code == 200
    assert b"approved" in response.content
    action.refresh_from_db()
    assert (action.status, action.decided_by) == ("approved", operator)
    assert len(callbacks) == 1  # the run's continuation, queued on commit
    again = client.post(reverse("autopilot:action-decide", args=[action.pk, "deny"]), **HX)
    assert b"not waiting for approval" in again.content


def test_non_operators_never_see_the_pages(client, user, make_operator_agent):
    action = _pending(make_operator_agent(["agent_stop"]))
    client.force_login(user)

    assert client.get(reverse("autopilot:agents")).status_code == 403
    denied = client.post(reverse("autopilot:action-decide", args=[action.pk, "deny"]), **HX)
    assert denied.status_code == 403
    action.refresh_from_db()
    assert action.status == "pending_approval"


def test_the_api_lists_and_decides_approvals(scoped_client, operator, make_operator_agent):
    agent = make_operator_agent(["agent_stop"])
    action = _pending(agent)
    api = scoped_client(operator, "read", "write", "admin")

    listed = api.get("/api/v1/operator/actions?status=pending_approval")
    denied = api.post(f"/api/v1/operator/actions/{action.pk}/deny")
    again = api.post(f"/api/v1/operator/actions/{action.pk}/approve")

    assert [row["id"] for row in listed.json()["results"]] == [action.pk]
    assert listed.json()["results"][0]["reasoning"] == "It has been idle for days."
    assert denied.status_code == 200 and denied.json()["status"] == "denied"
    assert denied.json()["decided_by"] == operator.username
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


def test_an_expired_approval_cannot_be_given(scoped_client, operator, make_operator_agent):
    action = _pending(make_operator_agent(["agent_stop"]), expires_at=timezone.now())
    api = scoped_client(operator, "read", "write", "admin")

    response = api.post(f"/api/v1/operator/actions/{action.pk}/approve")

    assert response.status_code == 409
    action.refresh_from_db()
    assert action.status == "expired"


def test_the_mcp_tools_list_and_decide_approvals(operator, user, make_operator_agent):
    action = _pending(make_operator_agent(["agent_stop"]))
    caller = Caller(
        user=operator, key=None, scopes=frozenset({"read", "write", "admin"}), transport="http"
    )

    listed = tool_run(caller, TOOLS["operator_approvals"], {})
    decided = tool_run(
        caller, TOOLS["operator_decide"], {"action_id": action.pk, "decision": "approve"}
    )

    assert [row["id"] for row in listed["actions"]] == [action.pk]
    assert decided["status"] == "approved"
    outsider = Caller(user=user, key=None, scopes=frozenset({"read", "write"}), transport="http")
    with pytest.raises(Forbidden, match="operators"):
        tool_run(outsider, TOOLS["operator_approvals"], {})


def test_beat_starts_the_agents_that_are_due(
    make_operator_agent, django_capture_on_commit_callbacks
):
    due = make_operator_agent(["fleet_stats"], name="due")
    recent = make_operator_agent(["fleet_stats"], name="recent")
    paused = make_operator_agent(["fleet_stats"], name="paused", enabled=False)
    busy = make_operator_agent(["fleet_stats"], name="busy")
    OperatorAgent.objects.filter(pk=recent.pk).update(last_run_at=timezone.now())
    OperatorAgent.objects.filter(pk=due.pk).update(
        last_run_at=timezone.now() - timedelta(minutes=31)
    )
    _pending(busy)

    with django_capture_on_commit_callbacks() as callbacks:
        started = operators_due()

    assert started == 1
    assert list(OperatorRun.objects.filter(trigger="schedule").values_list("agent", flat=True)) == [
        due.pk
    ]
    assert len(callbacks) == 1
    assert not paused.runs.exists()
    with pytest.raises(Conflict):
        operator_run_start(agent=due, trigger="again")


def test_run_now_queues_the_run(
    client, operator, make_operator_agent, django_capture_on_commit_callbacks
):
    agent = make_operator_agent(["fleet_stats"])
    client.force_login(operator)

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("autopilot:agent-run", args=[agent.pk]), **HX)

    assert b"is running" in response.content
    assert OperatorRun.objects.get().trigger == "run by olivia"
    assert len(callbacks) == 1
    assert CONTINUE_TASK in current_app.tasks  # the name the services queue is registered


def test_a_run_decided_before_it_paused_carries_on(
    operator, make_operator_agent, django_capture_on_commit_callbacks
):
    action = _pending(make_operator_agent(["agent_stop"]))
    run = action.run
    OperatorRun.objects.filter(pk=run.pk).update(status="running")  # still writing its pause
    operator_action_decide(action_id=action.pk, approve=False, actor=operator)

    with django_capture_on_commit_callbacks() as callbacks:
        operator_run_save(run=run, messages=[{"role": "user", "content": "go"}], waiting=True)

    assert len(callbacks) == 1  # nothing waits any more: it is queued to carry on


def test_a_calls_cost_impact_is_an_agent_hour_of_its_model(user, settings):
    settings.OPERATOR_AGENT_HOUR_USD = Decimal("0.5")
    agent = Agent.objects.create(
        owner=user, model="claude-sonnet-5-5", sandbox_id=str(uuid.uuid4()), status="running"
    )
    now = timezone.now()
    for hours, output in ((1, 100_000), (2, 300_000)):  # $1 and $3 at $10 a million out
        usage_record(
            user_id=user.pk,
            model="claude-sonnet-5-5",
            usage=TokenUsage(input_tokens=0, output_tokens=output),
            agent_id=agent.pk,
            at=now - timedelta(hours=hours),
        )

    assert cost_impact("agent_spawn", {"model": "claude-sonnet-5-5"}) == Decimal("2")
    assert cost_impact("agent_spawn", {"model": "claude-haiku-4-5"}) == Decimal("0.5")
    assert cost_impact("agent_stop", {"agent_id": str(agent.pk)}) == Decimal("-2")
    assert cost_impact("agent_start", {"agent_id": "nonsense"}) == 0
    assert cost_impact("fleet_stats", {}) == 0


def test_approving_a_call_of_a_run_with_no_conversation_ends_the_run_cleanly(
    scoped_client, operator, make_operator_agent, django_capture_on_commit_callbacks
):
    """A run waiting for approval whose conversation was never kept (made by hand) has nothing
    to carry on: the approval is taken and the run ends failed, saying why."""
    action = _pending(make_operator_agent(["agent_stop"]))
    api = scoped_client(operator, "read", "write", "admin")

    with django_capture_on_commit_callbacks(execute=True):  # the continuation runs here
        response = api.post(f"/api/v1/operator/actions/{action.pk}/approve")

    assert response.status_code == 200, response.content
    run = OperatorRun.objects.get(pk=action.run_id)
    assert run.status == OperatorRun.Status.FAILED
    assert "no conversation" in run.summary
