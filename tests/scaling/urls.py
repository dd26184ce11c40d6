"""The console's routes with the scaling API added at /api/v1/scaling/, as console/api/urls.py
registers it. Only for tests, until that registration lands; then delete this file."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from console.urls import urlpatterns as console_urlpatterns
from scaling.api import ScalingDecisionViewSet, ScalingRuleViewSet

router = SimpleRouter(trailing_slash=False)
router.register("scaling/rules", ScalingRuleViewSet, basename="api-scaling-rule")
router.register("scaling/decisions", ScalingDecisionViewSet, basename="api-scaling-decision")

urlpatterns = [path("api/v1/", include(router.urls)), *console_urlpatterns]
