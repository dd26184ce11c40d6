"""Scaling rules hold their invariants in clean() and, the ones that matter most, in the
database; decisions keep their history newest first and go with their rule."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from scaling.models import ScalingDecision, ScalingRule

pytestmark = pytest.mark.django_db


def _errors(rule: ScalingRule) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        rule.full_clean()
    return caught.value.message_dict


def _rule(**fields) -> ScalingRule:
    return ScalingRule(**{"name": "chat", "model": "claude-sonnet-4-5", **fields})


def test_defaults_are_the_documented_policy():
    rule = _rule()
    rule.full_clean()

    assert (rule.min_agents, rule.max_agents, rule.target_sessions_per_agent) == (10, 1000, 100)
    assert (rule.scale_up_threshold, rule.scale_down_threshold) == (
        Decimal("0.80"),
        Decimal("0.30"),
    )
    assert rule.evaluation_interval_seconds == 30
    assert (rule.scale_up_cooldown_seconds, rule.scale_down_cooldown_seconds) == (120, 300)
    assert (rule.scale_up_max_step, rule.scale_up_step_unit, rule.scale_up_period_seconds) == (
        100,
        "percent",
        60,
    )
    assert (
        rule.scale_down_max_step,
        rule.scale_down_step_unit,
        rule.scale_down_period_seconds,
    ) == (10, "percent", 60)
    assert (rule.warm_pool_size, rule.on_metrics_failure, rule.fallback_agents) == (0, "keep", None)
    assert (rule.predictive, rule.predictive_window_minutes, rule.enabled) == (False, 30, True)


def test_a_pool_may_scale_to_zero():
    _rule(min_agents=0).full_clean()


def test_min_above_max_is_refused():
    assert "min_agents" in _errors(_rule(min_agents=11, max_agents=10))


def test_thresholds_must_be_ordered():
    errors = _errors(_rule(scale_up_threshold="0.5", scale_down_threshold="0.5"))
    assert "scale_down_threshold" in errors


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scale_up_threshold", "1.001"),
        ("scale_up_threshold", "0"),
        ("scale_down_threshold", "0"),
        ("scale_down_threshold", "-0.1"),
    ],
)
def test_thresholds_are_utilizations_in_zero_to_one(field, value):
    assert field in _errors(_rule(**{field: Decimal(value)}))


def test_a_threshold_of_one_is_allowed():
    _rule(scale_up_threshold=Decimal(1)).full_clean()


def test_fixed_failure_behaviour_needs_a_fallback_within_bounds():
    assert "fallback_agents" in _errors(_rule(on_metrics_failure="fixed"))
    assert "fallback_agents" in _errors(
        _rule(on_metrics_failure="fixed", min_agents=5, max_agents=20, fallback_agents=21)
    )
    assert "fallback_agents" in _errors(
        _rule(on_metrics_failure="fixed", min_agents=5, max_agents=20, fallback_agents=4)
    )
    _rule(on_metrics_failure="fixed", min_agents=5, max_agents=20, fallback_agents=20).full_clean()


def test_a_fallback_without_fixed_behaviour_is_refused():
    assert "fallback_agents" in _errors(_rule(on_metrics_failure="keep", fallback_agents=12))


@pytest.mark.parametrize("direction", ["up", "down"])
def test_percent_steps_are_within_1_to_1000(direction):
    field = f"scale_{direction}_max_step"
    assert field in _errors(_rule(**{field: 1001}))
    assert field in _errors(_rule(**{field: 0}))
    _rule(**{field: 1000}).full_clean()
    # In agents, a step may be as large as the pool.
    _rule(**{field: 5000, f"scale_{direction}_step_unit": "agents"}).full_clean()


def test_the_warm_pool_fits_within_max_agents():
    assert "warm_pool_size" in _errors(_rule(max_agents=10, min_agents=0, warm_pool_size=11))


def test_evaluation_is_at_most_every_five_seconds():
    assert "evaluation_interval_seconds" in _errors(_rule(evaluation_interval_seconds=4))


def test_a_pool_has_one_rule(make_rule):
    first = make_rule(model="m", system_prompt="Be brief.")

    errors = _errors(_rule(name="other", model="m", system_prompt="Be brief."))

    assert "already scales this pool" in errors["__all__"][0]
    make_rule(model="m", system_prompt="Be thorough.")
    make_rule(model="other-model", system_prompt=first.system_prompt)


def test_a_long_system_prompt_fits_the_pool_key(make_rule):
    prompt = "Follow the runbook. " * 5000  # far past a btree entry's size
    make_rule(system_prompt=prompt)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_rule(system_prompt=prompt)


@pytest.mark.parametrize(
    "fields",
    [
        {"min_agents": 11, "max_agents": 10},
        {"scale_up_threshold": Decimal("0.3"), "scale_down_threshold": Decimal("0.3")},
        {"scale_up_threshold": Decimal("1.5"), "scale_down_threshold": Decimal("0.3")},
        {"on_metrics_failure": "fixed"},
        {"on_metrics_failure": "keep", "fallback_agents": 3},
    ],
)
def test_the_database_refuses_what_clean_would(make_rule, fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        make_rule(**fields)


def test_decisions_are_newest_first_and_go_with_their_rule(make_rule, make_decision):
    rule = make_rule()
    now = timezone.now()
    old = make_decision(rule, created_at=now - timedelta(minutes=1))
    new = make_decision(
        rule,
        created_at=now,
        observed_sessions=None,
        utilization=None,
        metrics_error="prometheus: connection refused",
    )

    assert list(rule.decisions.all()) == [new, old]
    assert new.observed_sessions is None and new.utilization is None

    rule.delete()
    assert not ScalingDecision.objects.exists()
