"""The operator agents' REST routes, under /api/v1/operator/."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from operator_agent import api

router = SimpleRouter(trailing_slash=False)
router.register("operator/agents", api.OperatorAgentViewSet, basename="api-operator-agent")
router.register("operator/actions", api.OperatorActionViewSet, basename="api-operator-action")

urlpatterns = [path("api/v1/", include(router.urls))]
