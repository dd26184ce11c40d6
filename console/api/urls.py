"""Routes of the REST API, mounted at ``/api/v1/``."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from agents import api as agents_api
from console.api import views
from scaling.api import ScalingDecisionViewSet, ScalingRuleViewSet, ScalingSimulateView

router = SimpleRouter(trailing_slash=False)
router.register("keys", views.ApiKeyViewSet, basename="api-key")
router.register("quotas", views.QuotaViewSet, basename="api-quota")
router.register("budgets", views.BudgetViewSet, basename="api-budget")
router.register("agents", agents_api.AgentViewSet, basename="api-agent")
router.register("sessions", agents_api.SessionViewSet, basename="api-session")
router.register("scaling/rules", ScalingRuleViewSet, basename="api-scaling-rule")
router.register("scaling/decisions", ScalingDecisionViewSet, basename="api-scaling-decision")

urlpatterns = [
    path("auth/login", views.LoginView.as_view(), name="api-login"),
    path("auth/refresh", views.RefreshView.as_view(), name="api-refresh"),
    path("usage", views.UsageView.as_view(), name="api-usage"),
    path("execute", agents_api.execute, name="api-execute"),
    path(
        "sessions/<uuid:session_id>/messages",
        agents_api.session_messages,
        name="api-session-messages",
    ),
    path("sessions/<uuid:session_id>/cancel", agents_api.session_cancel, name="api-session-cancel"),
    path("scaling/simulate", ScalingSimulateView.as_view(), name="api-scaling-simulate"),
    path("", include(router.urls)),
]
