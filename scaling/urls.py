"""The autoscaler's routes: its REST API and Prometheus' discovery of the agents."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from scaling import api, views

router = SimpleRouter(trailing_slash=False)
router.register("scaling/rules", api.ScalingRuleViewSet, basename="api-scaling-rule")
router.register("scaling/decisions", api.ScalingDecisionViewSet, basename="api-scaling-decision")

urlpatterns = [
    path("metrics/targets", views.metrics_targets, name="metrics-targets"),
    path("metrics/machines", views.metrics_machines, name="metrics-machines"),
    path("api/v1/scaling/simulate", api.ScalingSimulateView.as_view(), name="api-scaling-simulate"),
    path("api/v1/", include(router.urls)),
]
