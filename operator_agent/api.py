"""The operators' REST API for operator agents: the agents (read, and ``run`` now), and their
actions (read, and ``approve`` or ``deny`` one waiting for approval). Writes go through
``operator_agent.services``, each in the audit log.

Routes (``operator_agent/urls.py``): ``/api/v1/operator/agents`` and
``/api/v1/operator/actions``.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from console.api.permissions import HasScope, IsOperator
from operator_agent import services
from operator_agent.models import OperatorAction, OperatorAgent
from operator_agent.serializers import (
    ActionQuerySerializer,
    OperatorActionSerializer,
    OperatorAgentSerializer,
    OperatorRunSerializer,
)
from plumbing.pagination import ApiCursorPagination

__all__ = ["OperatorActionViewSet", "OperatorAgentViewSet"]

_OPERATORS = [IsAuthenticated, HasScope, IsOperator]


class OperatorAgentViewSet(viewsets.ReadOnlyModelViewSet):
    """Operator agents (created and changed on the dashboard). ``run`` starts a run now."""

    serializer_class = OperatorAgentSerializer
    permission_classes = _OPERATORS
    pagination_class = ApiCursorPagination
    queryset = OperatorAgent.objects.select_related("user")

    @extend_schema(request=None, responses={202: OperatorRunSerializer})
    @action(detail=True, methods=["post"])
    def run(self, request: Request, pk: str | None = None) -> Response:
        run = services.operator_run_start(
            agent=self.get_object(), trigger=f"run by {request.user.get_username()}"
        )
        return Response(OperatorRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


@extend_schema_view(list=extend_schema(parameters=[ActionQuerySerializer]))
class OperatorActionViewSet(viewsets.ReadOnlyModelViewSet):
    """Every tool call of every operator agent's runs, newest first; ``?status=pending_approval``
    lists those waiting for a person, whom ``approve`` and ``deny`` answer."""

    serializer_class = OperatorActionSerializer
    permission_classes = _OPERATORS
    pagination_class = ApiCursorPagination

    def get_queryset(self) -> QuerySet[OperatorAction]:
        found = OperatorAction.objects.select_related("run__agent", "decided_by").defer(
            "run__messages"
        )
        if self.action == "list":
            params = ActionQuerySerializer(data=self.request.query_params)
            params.is_valid(raise_exception=True)
            if params.validated_data.get("status"):
                found = found.filter(status=params.validated_data["status"])
        return found

    def _decide(self, request: Request, pk: str | None, *, approve: bool) -> Response:
        found = self.get_object()
        decided = services.operator_action_decide(
            action_id=found.pk, approve=approve, actor=request.user
        )
        return Response(OperatorActionSerializer(decided).data)

    @extend_schema(request=None, responses=OperatorActionSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(request, pk, approve=True)

    @extend_schema(request=None, responses=OperatorActionSerializer)
    @action(detail=True, methods=["post"])
    def deny(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(request, pk, approve=False)
