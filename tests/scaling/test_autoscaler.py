"""The autoscaler: beat finds the due rules, each is observed, decided and recorded with its
inputs and reason, and the decision is carried out on the pool: spawning through the agents'
spawn service (quotas and hosts apply), draining the least busy agents and stopping only those
without an open session."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.models import Agent, AgentDemand, Session
from agents.services import demand_record
from console.models import Quota, User
from scaling import selectors, services, tasks
from scaling.metrics import AGENTS_QUERY, SESSIONS_QUERY
from scaling.models import AUTOSCALER_ACCOUNT, ScalingDecision
from tests.scaling import prometheus

pytestmark = pytest.mark.django_db

MODEL = "claude-sonnet-4-5"
_S = Agent.Status


@pytest.fixture
def pool_rule(make_rule, user):
    """A rule over ``user``'s agents of one template, with no limits in the way."""

    def make(**fields):
        fields.setdefault("owner", user)
        fields.setdefault("model", MODEL)
        fields.setdefault("min_agents", 0)
        fields.setdefault("max_agents", 40)
        fields.setdefault("target_sessions_per_agent", 10)
        fields.setdefault("scale_up_cooldown_seconds", 0)
        fields.setdefault("scale_down_cooldown_seconds", 0)
        fields.setdefault("scale_up_max_step", 1000)
        fields.setdefault("scale_down_max_step", 100)
        return make_rule(**fields)

    return make


def pool_agents(rule, n, *, status=_S.RUNNING, **fields):
    owner = rule.owner or User.objects.get(username=AUTOSCALER_ACCOUNT)
    return [
        Agent.objects.create(
            owner=owner, model=rule.model, system_prompt=rule.system_prompt, status=status, **fields
        )
        for _ in range(n)
    ]


def open_sessions(agent, n):
    for _ in range(n):
        Session.objects.create(agent=agent, user=agent.owner)


def serving(rule):
    return Agent.objects.filter(
        model=rule.model,
        system_prompt=rule.system_prompt,
        status__in=Agent.ACTIVE_STATUSES,
        draining_since__isnull=True,
    )


# --- Evaluation ----------------------------------------------------------------------------------


def test_an_evaluation_records_the_decision_with_its_inputs_and_reason(pool_rule):
    rule = pool_rule(min_agents=0, max_agents=1000, target_sessions_per_agent=100)
    agents = pool_agents(rule, 50)
    for agent in agents:
        open_sessions(agent, 150)
    now = timezone.now()

    (decision,) = services.scaling_evaluate(rule_ids=[rule.pk], now=now)

    decision = ScalingDecision.objects.get(pk=decision.pk)
    assert decision.action == ScalingDecision.Action.SCALE_UP
    assert (decision.current_agents, decision.desired_agents) == (50, 75)
    assert decision.recommended_agents == 75
    assert decision.observed_sessions == 7500
    assert str(decision.utilization) == "1.5000"
    assert "7500 sessions on 50 agents" in decision.reason
    assert decision.metrics_error == ""
    inputs = decision.inputs
    assert inputs["now"] == now.isoformat()
    assert inputs["rule"]["target_sessions_per_agent"] == 100
    assert inputs["observation"]["agents_by_status"] == {"running": 50}
    assert inputs["observation"]["source"] == "database"
    assert inputs["history"] == []
    rule.refresh_from_db()
    assert rule.last_evaluated_at == now


def test_a_rule_is_evaluated_once_per_interval(pool_rule):
    rule = pool_rule(evaluation_interval_seconds=30)
    now = timezone.now()

    assert len(services.scaling_evaluate(rule_ids=[rule.pk], now=now)) == 1
    assert services.scaling_evaluate(rule_ids=[rule.pk], now=now) == []
    assert services.scaling_evaluate(now=now + timedelta(seconds=20)) == []
    assert selectors.scaling_rules_due(now=now + timedelta(seconds=20)) == []
    assert selectors.scaling_rules_due(now=now + timedelta(seconds=30)) == [rule.pk]
    assert len(services.scaling_evaluate(now=now + timedelta(seconds=30))) == 1


def test_a_paused_rule_is_not_evaluated(pool_rule):
    rule = pool_rule(enabled=False)

    assert selectors.scaling_rules_due() == []
    assert services.scaling_evaluate(rule_ids=[rule.pk]) == []
    assert services.scaling_rule_evaluate(rule_id=rule.pk) is None


def test_the_history_reaches_the_policy(pool_rule):
    rule = pool_rule(scale_up_cooldown_seconds=120, evaluation_interval_seconds=30)
    pool_agents(rule, 2)
    now = timezone.now()
    ScalingDecision.objects.create(
        rule=rule,
        created_at=now - timedelta(seconds=60),
        current_agents=1,
        desired_agents=2,
        action="scale_up",
        reason="earlier",
    )
    for agent in Agent.objects.all():
        open_sessions(agent, 20)

    (decision,) = services.scaling_evaluate(rule_ids=[rule.pk], now=now)

    assert decision.action == "hold"
    assert "within the 120 s scale-up cooldown" in decision.reason
    assert decision.inputs["history"] == [
        [(now - timedelta(seconds=60)).isoformat(), 1, 2, None, None]
    ]


def test_a_pass_takes_the_same_queries_for_five_rules_as_for_fifty(make_rule, user):
    def pass_queries(count: int, offset: int) -> int:
        rules = [
            make_rule(owner=user, model=MODEL, system_prompt=f"t{offset + n}") for n in range(count)
        ]
        for rule in rules:
            pool_agents(rule, 2)
        with CaptureQueriesContext(connection) as queries:
            decisions = services.scaling_evaluate(rule_ids=[r.pk for r in rules])
        assert len(decisions) == count
        return len(queries)

    pass_queries(1, 1000)  # the first pass creates the autoscaler's account
    assert pass_queries(5, 0) == pass_queries(50, 100)


def test_failed_metrics_are_recorded_and_met_with_the_fallback(pool_rule, settings):
    settings.PROMETHEUS_URL = "http://127.0.0.1:9"  # nothing listens there
    settings.PROMETHEUS_TIMEOUT_SECONDS = 1
    rule = pool_rule(on_metrics_failure="fixed", fallback_agents=6)
    pool_agents(rule, 3)

    (decision,) = services.scaling_evaluate(rule_ids=[rule.pk])

    assert "could not be reached" in decision.metrics_error
    assert decision.observed_sessions is None
    assert decision.utilization is None
    assert (decision.current_agents, decision.desired_agents) == (3, 6)
    assert "the fallback is 6" in decision.reason
    assert decision.inputs["observation"]["source"] == "prometheus"


def test_prometheus_sessions_drive_the_decision(pool_rule, settings):
    rule = pool_rule(name="support")
    pool_agents(rule, 4)
    with prometheus.serve() as fake:
        fake.series = {
            SESSIONS_QUERY: {"support": 90},
            AGENTS_QUERY: {"support": 4},
        }
        settings.PROMETHEUS_URL = fake.url
        (decision,) = services.scaling_evaluate(rule_ids=[rule.pk])

    assert (decision.observed_sessions, decision.desired_agents) == (90, 9)
    assert decision.inputs["observation"]["prometheus_agents"] == 4


# --- Applying ------------------------------------------------------------------------------------


def test_scaling_up_spawns_agents_of_the_pools_template_for_its_owner(
    pool_rule, user, django_capture_on_commit_callbacks
):
    rule = pool_rule(min_agents=3, system_prompt="You triage tickets.")

    with django_capture_on_commit_callbacks() as boots:
        decision = services.scaling_rule_evaluate(rule_id=rule.pk)

    assert decision.desired_agents == 3
    spawned = Agent.objects.filter(owner=user)
    assert spawned.count() == 3
    assert {(a.model, a.system_prompt, a.status) for a in spawned} == {
        (MODEL, "You triage tickets.", _S.PENDING)
    }
    assert len(boots) == 3  # each boot queued after commit
    decision.refresh_from_db()
    assert decision.inputs["applied"] == {"undrained": 0, "spawned": 3, "draining": 0, "stopped": 0}


def test_a_rule_without_an_owner_scales_the_autoscalers_own_pool(pool_rule):
    rule = pool_rule(owner=None, min_agents=2)

    services.scaling_rule_evaluate(rule_id=rule.pk)

    owners = set(serving(rule).values_list("owner__username", flat=True))
    assert owners == {AUTOSCALER_ACCOUNT}


def test_growth_stops_at_the_owners_quota_and_says_so(pool_rule, user):
    Quota.objects.update_or_create(user=user, defaults={"max_agents": 2})
    rule = pool_rule(min_agents=5)

    decision = services.scaling_rule_evaluate(rule_id=rule.pk)

    assert serving(rule).count() == 2
    decision.refresh_from_db()
    applied = decision.inputs["applied"]
    assert applied["spawned"] == 2
    assert applied["error"].startswith("quota_exceeded: ")


def test_growth_takes_draining_agents_back_before_spawning(pool_rule):
    rule = pool_rule(min_agents=3)
    back = pool_agents(rule, 2, draining_since=timezone.now())
    for agent in back:
        open_sessions(agent, 1)

    decision = services.scaling_rule_evaluate(rule_id=rule.pk)

    assert decision.inputs["applied"]["undrained"] == 2
    assert decision.inputs["applied"]["spawned"] == 1
    assert serving(rule).count() == 3
    assert set(serving(rule).values_list("pk", flat=True)) >= {a.pk for a in back}


def test_shrinking_drains_the_least_busy_and_stops_only_the_idle(
    pool_rule, django_capture_on_commit_callbacks
):
    rule = pool_rule(target_sessions_per_agent=10)
    busy, light, idle_a, idle_b = pool_agents(rule, 4)
    open_sessions(busy, 4)
    open_sessions(light, 1)
    # 5 sessions on 4 agents at 10 each: utilization 0.125; 1 agent carries the load.

    with django_capture_on_commit_callbacks() as halts:
        decision = services.scaling_rule_evaluate(rule_id=rule.pk)

    assert (decision.current_agents, decision.desired_agents) == (4, 1)
    assert decision.inputs["applied"] == {"undrained": 0, "spawned": 0, "draining": 3, "stopped": 2}
    states = {a.pk: (a.status, a.draining_since is not None) for a in Agent.objects.all()}
    assert states[busy.pk] == (_S.RUNNING, False)
    assert states[light.pk] == (_S.RUNNING, True)  # draining, its session goes on
    assert states[idle_a.pk] == (_S.STOPPING, True)
    assert states[idle_b.pk] == (_S.STOPPING, True)
    assert len(halts) == 2

    # Once its last session closes, a later pass stops the draining agent.
    Session.objects.filter(agent=light).update(closed_at=timezone.now())
    later = timezone.now() + timedelta(seconds=rule.evaluation_interval_seconds)
    decision = services.scaling_rule_evaluate(rule_id=rule.pk, now=later)
    assert decision.action == "hold"
    assert decision.inputs["applied"]["stopped"] == 1
    light.refresh_from_db()
    assert light.status == _S.STOPPING


def test_a_draining_agent_is_not_counted_as_serving(pool_rule):
    rule = pool_rule()
    pool_agents(rule, 2)
    pool_agents(rule, 3, draining_since=timezone.now())

    (decision,) = services.scaling_evaluate(rule_ids=[rule.pk])

    assert decision.current_agents == 2
    assert decision.inputs["observation"]["draining"] == 3


# --- Beat ----------------------------------------------------------------------------------------


def test_beat_queues_one_evaluation_per_due_rule(pool_rule):
    due = [pool_rule(min_agents=1), pool_rule(min_agents=1)]
    recent = pool_rule()
    recent.last_evaluated_at = timezone.now()
    recent.save(update_fields=["last_evaluated_at"])
    pool_rule(enabled=False)

    assert tasks.evaluate_due() == 2  # each evaluated at once here: tasks run eagerly in tests

    assert set(ScalingDecision.objects.values_list("rule_id", flat=True)) == {r.pk for r in due}
    assert all(serving(r).count() == 1 for r in due)
    assert tasks.evaluate(due[0].pk) is None  # already evaluated: a redelivery does nothing


def test_the_beat_schedule_runs_the_autoscaler():
    from config.celery import app

    app.loader.import_default_modules()
    entry = app.conf.beat_schedule["evaluate-scaling-rules"]
    assert entry["task"] == "scaling.tasks.evaluate_due"
    assert entry["schedule"] <= 5
    assert "scaling.tasks.evaluate" in app.tasks


# --- Waking a pool at zero -----------------------------------------------------------------------


def demand(owner, *, seconds=30):
    return AgentDemand.objects.create(
        owner=owner, expires_at=timezone.now() + timedelta(seconds=seconds)
    )


def test_demand_waiting_wakes_a_pool_at_zero_at_once_and_the_decision_says_why(
    pool_rule, user, django_capture_on_commit_callbacks
):
    rule = pool_rule(evaluation_interval_seconds=600)
    services.scaling_evaluate(rule_ids=[rule.pk])  # evaluated just now: not due for 10 minutes
    waiting = [demand(user), demand(user)]

    with django_capture_on_commit_callbacks():
        decision = services.scaling_wake(owner_id=user.pk)

    decision.refresh_from_db()
    assert decision.action == ScalingDecision.Action.SCALE_UP
    assert (decision.current_agents, decision.desired_agents) == (0, 1)
    assert "2 requests waiting for an agent" in decision.reason
    assert "the pool is at zero with demand waiting: waking it (activation)" in decision.reason
    assert decision.inputs["observation"]["waiting"] == 2
    assert decision.inputs["applied"]["spawned"] == 1
    assert serving(rule).count() == 1
    for row in waiting:
        row.refresh_from_db()
        assert (row.answered_at is not None, row.pool) == (True, rule.name)


def test_without_demand_a_pool_at_zero_stays_at_zero(pool_rule, user):
    rule = pool_rule()

    decision = services.scaling_rule_evaluate(rule_id=rule.pk)

    assert (decision.action, decision.desired_agents) == (ScalingDecision.Action.HOLD, 0)
    assert "waking" not in decision.reason
    assert decision.inputs["observation"]["waiting"] == 0
    assert not serving(rule).exists()


def test_expired_demand_wakes_nothing(pool_rule, user):
    rule = pool_rule()
    demand(user, seconds=-1)

    decision = services.scaling_rule_evaluate(rule_id=rule.pk)

    assert decision.desired_agents == 0


def test_beat_counts_waiting_demand_in_the_load_of_the_owners_first_pool_only(pool_rule, user):
    first, second = pool_rule(name="a-first"), pool_rule(name="b-second")
    other = pool_rule(owner=None, name="0-autoscalers")
    demand(user)

    with_demand = {d.rule_id: d for d in services.scaling_evaluate()}

    assert with_demand[first.pk].desired_agents == 1
    assert with_demand[second.pk].desired_agents == 0
    assert with_demand[other.pk].desired_agents == 0


def test_a_wake_of_a_pool_with_an_agent_evaluates_only_when_due(pool_rule, user):
    rule = pool_rule(evaluation_interval_seconds=600)
    pool_agents(rule, 1, status=_S.STARTING)
    services.scaling_evaluate(rule_ids=[rule.pk])
    row = demand(user)

    assert services.scaling_wake(owner_id=user.pk) is None

    row.refresh_from_db()
    assert row.pool == rule.name
    assert rule.decisions.count() == 1


def test_a_wake_for_an_owner_without_a_rule_answers_that_no_pool_wakes(pool_rule, user, operator):
    pool_rule(owner=operator)
    row = demand(user)

    assert services.scaling_wake(owner_id=user.pk) is None

    row.refresh_from_db()
    assert (row.answered_at is not None, row.pool) == (True, "")


def test_recorded_demand_queues_the_wake_by_name_once_committed(
    pool_rule, user, django_capture_on_commit_callbacks
):
    rule = pool_rule()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        demand_record(user=user)

    assert callbacks  # the wake, run eagerly here; the agent's boot after it
    (decision,) = rule.decisions.all()
    assert (decision.current_agents, decision.desired_agents) == (0, 1)
    assert serving(rule).count() == 1
