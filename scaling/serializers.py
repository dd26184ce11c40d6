"""What the scaling API reads and answers: rules, decisions, and the lists' query parameters."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from scaling.models import POLICY_FIELDS, ScalingDecision, ScalingRule
from scaling.simulator import SHAPES, TraceError, trace_from_csv, trace_shape

__all__ = [
    "ScalingDecisionQuerySerializer",
    "ScalingDecisionSerializer",
    "ScalingRuleQuerySerializer",
    "ScalingRuleSerializer",
    "SimulationRequestSerializer",
    "SimulationResultSerializer",
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


def _check(validate: Callable[[], None]) -> None:
    """Run a rule's model validation; its errors answer in the API's shape, those of no one
    field (a constraint across fields) under ``non_field_errors``."""
    try:
        validate()
    except DjangoValidationError as exc:
        errors = exc.message_dict
        if NON_FIELD_ERRORS in errors:
            errors["non_field_errors"] = errors.pop(NON_FIELD_ERRORS)
        raise serializers.ValidationError(errors) from exc


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
            *POLICY_FIELDS,
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
        _check(candidate.full_clean)
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


# --- The simulator -------------------------------------------------------------------------------


class SimulationRuleSerializer(serializers.ModelSerializer):
    """A rule's scaling settings, as a rule would have them (the rest at the defaults); checked
    against the rule's invariants, never saved."""

    scale_up_step_unit = _StepUnitField()
    scale_down_step_unit = _StepUnitField()

    class Meta:
        model = ScalingRule
        fields = POLICY_FIELDS

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        _check(ScalingRule(**attrs).clean)
        return attrs


class SimulationTraceSerializer(serializers.Serializer):
    """The load to replay: a built-in ``shape`` with its parameters, or ``csv`` rows of
    ``seconds,sessions``."""

    shape = serializers.ChoiceField(choices=list(SHAPES), required=False)
    csv = serializers.CharField(
        required=False,
        trim_whitespace=False,
        max_length=1_000_000,
        help_text="Rows of seconds,sessions (a header row is allowed); times increasing.",
    )
    low = serializers.IntegerField(required=False, min_value=0, help_text="Sessions; default 100.")
    high = serializers.IntegerField(
        required=False, min_value=0, help_text="Sessions; default 5000."
    )
    duration_seconds = serializers.IntegerField(
        required=False,
        min_value=60,
        max_value=7 * 86_400,
        help_text="Default: an hour; daily: a day.",
    )
    step_seconds = serializers.IntegerField(required=False, min_value=1, max_value=86_400)
    spike_at_seconds = serializers.IntegerField(required=False, min_value=0)
    spike_seconds = serializers.IntegerField(required=False, min_value=1)
    peak_hour = serializers.FloatField(required=False, min_value=0, max_value=24)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        shape, text = attrs.pop("shape", None), attrs.pop("csv", None)
        if (shape is None) == (text is None):
            raise serializers.ValidationError(
                {"non_field_errors": ["give either a shape or a csv, not both"]}
            )
        try:
            if text is not None:
                if attrs:
                    raise serializers.ValidationError(
                        {"csv": [f"a CSV trace takes no shape parameters ({', '.join(attrs)})"]}
                    )
                return {"points": trace_from_csv(text)}
            return {"points": trace_shape(shape, **attrs)}
        except TraceError as exc:
            raise serializers.ValidationError({"csv" if text else "shape": [str(exc)]}) from exc


class SimulationRequestSerializer(serializers.Serializer):
    rule = SimulationRuleSerializer(required=False, help_text="Unset settings: the defaults.")
    trace = SimulationTraceSerializer()
    start_agents = serializers.IntegerField(
        required=False, min_value=0, help_text="The pool's size at the start; default: min_agents."
    )


class _SimulationPointSerializer(serializers.Serializer):
    seconds = serializers.FloatField()
    sessions = serializers.IntegerField()
    agents = serializers.IntegerField(help_text="Running after the evaluation's decision.")
    utilization = serializers.FloatField(allow_null=True)


class _SimulationDecisionSerializer(serializers.Serializer):
    seconds = serializers.FloatField()
    direction = serializers.ChoiceField(choices=["scale_up", "scale_down"])
    from_agents = serializers.IntegerField()
    to_agents = serializers.IntegerField()
    reason = serializers.CharField()


class _SimulationSummarySerializer(serializers.Serializer):
    evaluations = serializers.IntegerField()
    moves = serializers.IntegerField()
    peak_agents = serializers.IntegerField()
    peak_sessions = serializers.IntegerField()
    peak_utilization = serializers.FloatField()
    mean_utilization = serializers.FloatField(allow_null=True)
    overloaded_evaluations = serializers.IntegerField(help_text="Evaluations past utilization 1.")
    agent_hours = serializers.FloatField()


class SimulationResultSerializer(serializers.Serializer):
    """Each evaluation's load and agents, the moves with their reasons, a summary, and the
    series drawn as an SVG document."""

    points = _SimulationPointSerializer(many=True)
    decisions = _SimulationDecisionSerializer(many=True, help_text="The moves only.")
    summary = _SimulationSummarySerializer()
    svg = serializers.CharField()
