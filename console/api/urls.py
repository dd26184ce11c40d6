"""The tenant's REST routes, under ``/api/v1/``."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from console.api import views

router = SimpleRouter(trailing_slash=False)
router.register("keys", views.ApiKeyViewSet, basename="api-key")
router.register("quotas", views.QuotaViewSet, basename="api-quota")
router.register("budgets", views.BudgetViewSet, basename="api-budget")

urlpatterns = [
    path("auth/login", views.LoginView.as_view(), name="api-login"),
    path("auth/refresh", views.RefreshView.as_view(), name="api-refresh"),
    path("usage", views.UsageView.as_view(), name="api-usage"),
    path("", include(router.urls)),
]
