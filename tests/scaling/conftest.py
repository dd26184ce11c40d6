"""Fixtures for the scaling tests: rules and decisions, and an operator's client."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from scaling.models import ScalingDecision, ScalingRule

_numbers = itertools.count(1)


@pytest.fixture
def operator_client(operator, scoped_client) -> APIClient:
    """An operator's client, with a key holding every scope."""
    return scoped_client(operator, "read", "write", "admin")


@pytest.fixture
def make_rule():
    """``make_rule(**fields)``: a saved rule for a pool of its own."""

    def make(**fields) -> ScalingRule:
        n = next(_numbers)
        fields.setdefault("name", f"pool-{n}")
        fields.setdefault("model", "claude-sonnet-4-5")
        fields.setdefault("system_prompt", f"You are agent template {n}.")
        return ScalingRule.objects.create(**fields)

    return make


@pytest.fixture
def make_decision():
    """``make_decision(rule, **fields)``: a saved decision of ``rule``."""

    def make(rule: ScalingRule, **fields) -> ScalingDecision:
        fields.setdefault("current_agents", 10)
        fields.setdefault("desired_agents", 10)
        fields.setdefault("observed_sessions", 500)
        fields.setdefault("utilization", Decimal("0.5"))
        fields.setdefault("action", ScalingDecision.Action.HOLD)
        fields.setdefault("reason", "utilization 0.50 is between the thresholds")
        fields.setdefault("inputs", {"sessions": fields["observed_sessions"]})
        return ScalingDecision.objects.create(rule=rule, **fields)

    return make
