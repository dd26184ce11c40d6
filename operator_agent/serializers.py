"""The operator agents' REST shapes: agents with their spend today, runs, and actions."""

from __future__ import annotations

from rest_framework import serializers

from operator_agent.models import OperatorAction, OperatorAgent, OperatorRun

__all__ = [
    "ActionQuerySerializer",
    "OperatorActionSerializer",
    "OperatorAgentSerializer",
    "OperatorRunSerializer",
]


class OperatorActionSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="run.agent.name", read_only=True)
    decided_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = OperatorAction
        fields = [
            "id",
            "run",
            "agent",
            "at",
            "tool",
            "arguments",
            "reasoning",
            "status",
            "result",
            "cost_impact_usd_per_hour",
            "approval_reason",
            "expires_at",
            "decided_by",
            "decided_at",
        ]
        read_only_fields = fields


class OperatorRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = OperatorRun
        fields = [
            "id",
            "agent",
            "trigger",
            "status",
            "started_at",
            "ended_at",
            "summary",
            "cost_usd",
        ]
        read_only_fields = fields


class OperatorAgentSerializer(serializers.ModelSerializer):
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = OperatorAgent
        fields = [
            "id",
            "name",
            "instructions",
            "model",
            "every_minutes",
            "enabled",
            "daily_usd_cap",
            "tool_calls_per_minute",
            "allowed_tools",
            "spawn_approval_over",
            "cost_approval_over_usd_per_hour",
            "user",
            "last_run_at",
        ]
        read_only_fields = fields


class ActionQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=OperatorAction.Status.choices, required=False)
