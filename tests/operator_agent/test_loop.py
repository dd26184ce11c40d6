"""Runs of operator agents against the console's gateway and the fake Anthropic, scripted to
call tools: approval gates, denials and expiry, the daily cap, failing tools, the tool-call
rate limit, and the audit log."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import Agent
from console.models import AuditEvent, UsageRecord
from operator_agent.models import OperatorAction, OperatorRun
from operator_agent.services import (
    operator_action_decide,
    operator_actions_expire,
    operator_run_start,
)
from plumbing.errors import Conflict
from tests.fakes.anthropic import Text, ToolUse

pytestmark = pytest.mark.django_db(transaction=True)

Status = OperatorAction.Status


@pytest.fixture(autouse=True)
def _through_the_gateway(live_console):
    """Each run calls Claude through the console's gateway (served for the test), which calls
    the fake Anthropic."""


def _tool_results(request) -> list[dict]:
    """The tool results the model read in ``request``'s last message."""
    return [
        block
        for block in request.body["messages"][-1]["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]


def _run(agent) -> OperatorRun:
    run = operator_run_start(agent=agent, trigger="test")  # the task runs eagerly on commit
    run.refresh_from_db()
    return run


def test_a_run_calls_its_tools_through_the_gateway_and_logs_each_action(
    make_operator_agent, fake_anthropic
):
    agent = make_operator_agent(["fleet_stats", "agents_list"])
    fake_anthropic.enqueue(
        ToolUse("fleet_stats", {}, text="First, how big is the fleet?"),
        ToolUse("agents_list", {"limit": 5}, text="Now which agents run."),
        Text("All quiet: no agent runs."),
    )

    run = _run(agent)

    assert run.status == OperatorRun.Status.COMPLETED
    assert run.summary == "All quiet: no agent runs."
    actions = list(run.actions.all())
    assert [(a.tool, a.status) for a in actions] == [
        ("fleet_stats", Status.EXECUTED),
        ("agents_list", Status.EXECUTED),
    ]
    assert actions[0].reasoning == "First, how big is the fleet?"
    assert actions[1].arguments == {"limit": 5}
    assert actions[1].result == {"agents": [], "count": 0}
    # Claude was called as the agent's account, through the gateway, with the allowed tools.
    offered = {tool["name"] for tool in fake_anthropic.requests[0].body["tools"]}
    assert offered == {"fleet_stats", "agents_list"}
    assert json.loads(_tool_results(fake_anthropic.requests[2])[0]["content"]) == {
        "agents": [],
        "count": 0,
    }
    spent = UsageRecord.objects.filter(user=agent.user)
    assert spent.count() == 3
    assert run.cost_usd == sum(r.cost_usd for r in spent) > 0
    # Every action is in the audit log, as the agent's account.
    audited = AuditEvent.objects.filter(target_type="operator_agent.operatoraction")
    assert sorted(int(e.target_id) for e in audited) == [a.pk for a in actions]
    assert {e.actor_id for e in audited} == {agent.user_id}
    assert AuditEvent.objects.filter(action="operatorrun.completed", target_id=str(run.pk)).exists()


def test_a_destructive_call_waits_for_approval_and_runs_once_approved(
    make_operator_agent, fake_anthropic, rule, operator
):
    agent = make_operator_agent(["scaling_rule_update"])
    fake_anthropic.enqueue(
        ToolUse(
            "scaling_rule_update",
            {"rule_id": rule.pk, "changes": {"max_agents": 500}},
            text="The pool never needs a thousand agents.",
        )
    )

    run = _run(agent)

    assert run.status == OperatorRun.Status.WAITING_APPROVAL
    action = run.actions.get()
    assert action.status == Status.PENDING
    assert action.approval_reason == "scaling_rule_update is destructive"
    assert action.expires_at > timezone.now()
    rule.refresh_from_db()
    assert rule.max_agents == 1000  # nothing ran
    assert len(fake_anthropic.requests) == 1

    fake_anthropic.enqueue(Text("Lowered the pool's ceiling to 500."))
    operator_action_decide(action_id=action.pk, approve=True, actor=operator)

    run.refresh_from_db()
    action.refresh_from_db()
    rule.refresh_from_db()
    assert rule.max_agents == 500
    assert action.status == Status.EXECUTED
    assert action.decided_by == operator
    assert run.status == OperatorRun.Status.COMPLETED
    seen = _tool_results(fake_anthropic.requests[-1])
    assert seen[0]["is_error"] is False
    assert json.loads(seen[0]["content"])["max_agents"] == 500
    assert AuditEvent.objects.filter(
        action="operatoraction.approved", actor=operator, target_id=str(action.pk)
    ).exists()


def test_a_denied_call_never_runs_and_the_model_is_told(
    make_operator_agent, fake_anthropic, rule, operator
):
    agent = make_operator_agent(["scaling_rule_update"])
    fake_anthropic.enqueue(
        ToolUse("scaling_rule_update", {"rule_id": rule.pk, "changes": {"max_agents": 2}})
    )
    run = _run(agent)
    action = run.actions.get()

    fake_anthropic.enqueue(Text("Understood; the rule stays as it is."))
    operator_action_decide(action_id=action.pk, approve=False, actor=operator)

    run.refresh_from_db()
    action.refresh_from_db()
    rule.refresh_from_db()
    assert rule.max_agents == 1000
    assert action.status == Status.DENIED
    assert action.result is None
    assert run.status == OperatorRun.Status.COMPLETED
    told = _tool_results(fake_anthropic.requests[-1])[0]
    assert told["is_error"] is True
    assert "denied by olivia" in told["content"]


def test_an_expired_call_never_runs_and_the_model_is_told(
    make_operator_agent, fake_anthropic, rule
):
    agent = make_operator_agent(["scaling_rule_update"])
    fake_anthropic.enqueue(
        ToolUse("scaling_rule_update", {"rule_id": rule.pk, "changes": {"max_agents": 2}})
    )
    action = _run(agent).actions.get()
    fake_anthropic.enqueue(Text("Nobody answered; I left the rule alone."))

    assert operator_actions_expire(now=action.expires_at + timedelta(seconds=1)) == 1

    action.refresh_from_db()
    rule.refresh_from_db()
    assert action.status == Status.EXPIRED
    assert rule.max_agents == 1000
    assert action.run.status == OperatorRun.Status.COMPLETED
    told = _tool_results(fake_anthropic.requests[-1])[0]
    assert told["is_error"] is True
    assert "expired" in told["content"]


def test_the_daily_cap_stops_a_run_midway(make_operator_agent, fake_anthropic, settings):
    settings.OPERATOR_MAX_TOKENS = 500
    agent = make_operator_agent(["fleet_stats", "agents_list"], daily_usd_cap=Decimal("0.05"))
    # A long-winded first reply: 6000 output tokens at $10 a million spend the cap.
    fake_anthropic.enqueue(
        ToolUse("fleet_stats", {}, text="word " * 6000),
        ToolUse("agents_list", {}),
        Text("never read"),
    )

    run = _run(agent)

    assert run.status == OperatorRun.Status.STOPPED_BY_CAP
    assert "budget" in run.summary
    assert [a.tool for a in run.actions.all()] == ["fleet_stats"]
    assert len(fake_anthropic.requests) == 1  # the second call never left the gateway
    assert run.cost_usd > Decimal("0.05")


def test_a_run_whose_tools_fail_reports_them_and_ends_cleanly(make_operator_agent, fake_anthropic):
    agent = make_operator_agent(["agent_get"])
    missing = "00000000-0000-0000-0000-000000000000"
    fake_anthropic.enqueue(
        ToolUse("agent_get", {"agent_id": missing}),
        ToolUse("agent_get", {"agent_id": "not an id"}),
        ToolUse("agent_delete", {"agent_id": missing}),
        Text("Both lookups failed; nothing to report."),
    )

    run = _run(agent)

    assert run.status == OperatorRun.Status.COMPLETED
    assert [(a.tool, a.status) for a in run.actions.all()] == [
        ("agent_get", Status.FAILED),
        ("agent_get", Status.FAILED),
        ("agent_delete", Status.REFUSED),  # not one of its tools
    ]
    first, second, third = (_tool_results(r)[0] for r in fake_anthropic.requests[1:4])
    assert first["is_error"] and "agent_not_found" in first["content"]
    assert second["is_error"] and "agent_id" in second["content"]
    assert third["is_error"] and "tool_not_allowed" in third["content"]


def test_tool_calls_past_the_rate_limit_are_refused(make_operator_agent, fake_anthropic):
    agent = make_operator_agent(["fleet_stats"], tool_calls_per_minute=2)
    fake_anthropic.enqueue(
        ToolUse("fleet_stats", {}),
        ToolUse("fleet_stats", {}),
        ToolUse("fleet_stats", {}),
        Text("Done."),
    )

    run = _run(agent)

    statuses = [a.status for a in run.actions.all()]
    if statuses[-1] == Status.EXECUTED:  # the minute turned mid-run: try once more
        pytest.skip("the run straddled a minute boundary")
    assert statuses == [Status.EXECUTED, Status.EXECUTED, Status.FAILED]
    assert run.actions.last().result["error"]["code"] == "rate_limited"
    assert run.status == OperatorRun.Status.COMPLETED


def test_a_spawn_past_the_limit_or_above_the_cost_threshold_waits(
    make_operator_agent, fake_anthropic, settings
):
    settings.OPERATOR_AGENT_HOUR_USD = Decimal("3")
    agent = make_operator_agent(["agent_spawn"], spawn_approval_over=5)
    fake_anthropic.enqueue(ToolUse("agent_spawn", {"name": "helper"}))

    run = _run(agent)

    action = run.actions.get()
    assert action.status == Status.PENDING
    assert action.cost_impact_usd_per_hour == Decimal("3")
    assert action.approval_reason == "cost impact $3/h is above $2/h"
    assert not Agent.objects.exists()


def test_a_second_run_of_an_agent_waits_for_the_first(make_operator_agent, fake_anthropic, rule):
    agent = make_operator_agent(["scaling_rule_update"])
    fake_anthropic.enqueue(
        ToolUse("scaling_rule_update", {"rule_id": rule.pk, "changes": {"max_agents": 2}})
    )
    _run(agent)

    with pytest.raises(Conflict):
        operator_run_start(agent=agent, trigger="test")
