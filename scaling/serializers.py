"""What the scaling API reads and answers: rules, decisions, and the lists' query parameters."""

from __future__ import annotations

import copy
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from scaling.models import ScalingDecision, ScalingRule

__all__ = [
    "ScalingDecisionQuerySerializer",
    "ScalingDecisionSerializer",
    "ScalingRuleQuerySerializer",
    "ScalingRuleSerializer",
]


@extend_schema_field(
    {
        "type": "string",
        "enum": ScalingRule.StepUnit.values,
        "description": "A step counts agents, or percent of the current count.",
    },
    component_name="StepUnit",
)
class _StepUnitField(serializers.ChoiceField):
    """Both directions' step unit, one named choice set in the schema."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=ScalingRule.StepUnit.choices, required=False, **kwargs)


class ScalingRuleSerializer(serializers.ModelSerializer):
    """A rule as operators read and write it. A write is checked against every invariant of
    the model (``ScalingRule.clean`` and its constraints) as the row would be once saved, so a
    partial update cannot break one with the values it leaves alone."""

    scale_up_step_unit = _StepUnitField()
    scale_down_step_unit = _StepUnitField()

    class Meta:
        model = ScalingRule
        fields = [
            "id",
            "name",
            "owner",
            "model",
            "system_prompt",
            "enabled",
            "min_agents",
            "max_agents",
            "target_sessions_per_agent",
            "scale_up_threshold",
            "scale_down_threshold",
            "evaluation_interval_seconds",
            "scale_up_cooldown_seconds",
            "scale_up_max_step",
            "scale_up_step_unit",
            "scale_up_period_seconds",
            "scale_down_cooldown_seconds",
            "scale_down_max_step",
            "scale_down_step_unit",
            "scale_down_period_seconds",
            "warm_pool_size",
            "on_metrics_failure",
            "fallback_agents",
            "predictive",
            "predictive_window_minutes",
            "last_evaluated_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "enabled", "last_evaluated_at", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.instance is None:
            candidate = ScalingRule(**attrs)
        else:
            candidate = copy.copy(self.instance)  # the row as saved, not yet changed
            for field, value in attrs.items():
                setattr(candidate, field, value)
        try:
            candidate.full_clean()
        except DjangoValidationError as exc:
            errors = exc.message_dict
            if NON_FIELD_ERRORS in errors:
                errors["non_field_errors"] = errors.pop(NON_FIELD_ERRORS)
            raise serializers.ValidationError(errors) from exc
        return attrs


class ScalingRuleQuerySerializer(serializers.Serializer):
    enabled = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="true: enabled; false: paused."
    )
    model = serializers.CharField(
        required=False, allow_null=True, default=None, max_length=100, help_text="Exact match."
    )


class ScalingDecisionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScalingDecision
        fields = [
            "id",
            "rule",
            "created_at",
            "action",
            "current_agents",
            "desired_agents",
            "recommended_agents",
            "observed_sessions",
            "utilization",
            "reason",
            "metrics_error",
            "inputs",
        ]
        read_only_fields = fields


class ScalingDecisionQuerySerializer(serializers.Serializer):
    rule = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, help_text="A rule's id."
    )
    action = serializers.ChoiceField(
        choices=ScalingDecision.Action.choices, required=False, allow_null=True, default=None
    )
