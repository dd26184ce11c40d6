"""Operator agents for the tests: made through the service, as the dashboard makes them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from autopilot.loop import tools_need_admin
from operator_agent.services import operator_agent_create
from scaling.models import ScalingRule

MODEL = "claude-sonnet-5-5"


@pytest.fixture
def make_operator_agent(operator):
    """``make_operator_agent(tools, **settings)``: an operator agent allowed ``tools``."""

    def make(tools: list[str], **values):
        values = {
            "name": "watcher",
            "instructions": "Keep the fleet healthy and cheap.",
            "model": MODEL,
            "every_minutes": 30,
            "enabled": True,
            "daily_usd_cap": Decimal("5"),
            "tool_calls_per_minute": 10,
            "spawn_approval_over": 1,
            "cost_approval_over_usd_per_hour": Decimal("2"),
            "allowed_tools": tools,
        } | values
        return operator_agent_create(values=values, admin=tools_need_admin(tools), actor=operator)

    return make


@pytest.fixture
def rule():
    return ScalingRule.objects.create(
        name="pool", model=MODEL, system_prompt="Be a pool agent.", min_agents=0, enabled=False
    )
