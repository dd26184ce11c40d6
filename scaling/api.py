"""The operators' REST API for scaling: rules (read, write, enable, pause) and the decisions
taken under them (read only). Writes go through ``scaling.services``, each recorded in the audit
log; lists through ``scaling.selectors``; refusals answer in the console's error shape.

The routes are registered in ``scaling/urls.py`` under ``scaling/rules`` and
``scaling/decisions``.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer

from console.api.permissions import HasScope, IsOperator
from plumbing.pagination import ApiCursorPagination
from scaling import selectors, services
from scaling.models import ScalingRule
from scaling.serializers import (
    ScalingDecisionQuerySerializer,
    ScalingDecisionSerializer,
    ScalingRuleQuerySerializer,
    ScalingRuleSerializer,
    SimulationRequestSerializer,
    SimulationResultSerializer,
)
from scaling.simulator import TraceError, simulate, simulation_svg

__all__ = ["ScalingDecisionViewSet", "ScalingRuleViewSet", "ScalingSimulateView"]

_OPERATORS = [IsAuthenticated, HasScope, IsOperator]


def _list_filters(view: viewsets.GenericViewSet, query: type[Serializer]) -> dict[str, Any]:
    """The list's filters from the query string, validated (400 when malformed); other
    actions are not filtered."""
    if view.action != "list":
        return {}
    params = query(data=view.request.query_params)
    params.is_valid(raise_exception=True)
    return params.validated_data


class _DecisionPagination(ApiCursorPagination):
    # Newest first, as the (rule, created_at) index reads one rule's history.
    ordering = "-created_at"


@extend_schema_view(list=extend_schema(parameters=[ScalingRuleQuerySerializer]))
class ScalingRuleViewSet(viewsets.ModelViewSet):
    """Scaling rules, one per agent pool (a model and a system prompt). ``enable`` and
    ``pause`` switch a rule's evaluation on and off; every change is in the audit log."""

    serializer_class = ScalingRuleSerializer
    permission_classes = _OPERATORS
    pagination_class = ApiCursorPagination

    def get_queryset(self) -> QuerySet[ScalingRule]:
        return selectors.scaling_rule_list(**_list_filters(self, ScalingRuleQuerySerializer))

    def perform_create(self, serializer: ScalingRuleSerializer) -> None:
        serializer.instance = services.scaling_rule_create(
            actor=self.request.user, values=serializer.validated_data
        )

    def perform_update(self, serializer: ScalingRuleSerializer) -> None:
        services.scaling_rule_update(
            rule=serializer.instance, values=serializer.validated_data, actor=self.request.user
        )

    def perform_destroy(self, instance: ScalingRule) -> None:
        services.scaling_rule_delete(rule=instance, actor=self.request.user)

    @extend_schema(request=None, responses=ScalingRuleSerializer)
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str | None = None) -> Response:
        rule = services.scaling_rule_set_enabled(
            rule=self.get_object(), enabled=True, actor=request.user
        )
        return Response(ScalingRuleSerializer(rule).data)

    @extend_schema(request=None, responses=ScalingRuleSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        rule = services.scaling_rule_set_enabled(
            rule=self.get_object(), enabled=False, actor=request.user
        )
        return Response(ScalingRuleSerializer(rule).data)


@extend_schema_view(list=extend_schema(parameters=[ScalingDecisionQuerySerializer]))
class ScalingDecisionViewSet(viewsets.ReadOnlyModelViewSet):
    """What the autoscaler decided for each rule, and why, newest first."""

    serializer_class = ScalingDecisionSerializer
    permission_classes = _OPERATORS
    pagination_class = _DecisionPagination

    def get_queryset(self) -> QuerySet:
        filters = _list_filters(self, ScalingDecisionQuerySerializer)
        return selectors.scaling_decision_list(
            rule_id=filters.get("rule"), action=filters.get("action")
        )


class ScalingSimulateView(generics.GenericAPIView):
    """Replay a load trace (a built-in shape or CSV rows) through a rule's settings, before the
    rule is saved: the agents it would run, their utilization, and every move with its reason.
    Nothing is written."""

    serializer_class = SimulationRequestSerializer
    permission_classes = _OPERATORS

    @extend_schema(request=SimulationRequestSerializer, responses=SimulationResultSerializer)
    def post(self, request: Request) -> Response:
        params = self.get_serializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        rule = ScalingRule(**data.get("rule", {}))
        try:
            result = simulate(
                rule=rule, trace=data["trace"]["points"], start_agents=data.get("start_agents")
            )
        except TraceError as exc:  # too long a replay for the rule's interval
            raise ValidationError({"trace": [str(exc)]}) from exc
        body = {**result.as_dict(), "svg": simulation_svg(result)}
        return Response(SimulationResultSerializer(body).data)
