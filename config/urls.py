"""The console's routes: each app's own, by the prefixes it serves."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    # /health, /ready, /metrics (and /healthz, /livez, /readyz), /api/schema/, /api/docs/,
    # /favicon.ico
    path("", include("plumbing.urls")),
    # /, /accounts/, /keys/, /admin/login/, /api/v1/ auth, keys, quotas, budgets, usage
    path("", include("console.urls")),
    # /chat/, /ws/chat/ (routing.py), /api/asyncapi/, /agents/<id>/…, /v1/agents (Hypercore),
    # /api/v1/ agents, sessions, execute
    path("", include("agents.urls")),
    # /metrics/targets, /api/v1/scaling/
    path("", include("scaling.urls")),
    # /api/v1/operator/
    path("", include("operator_agent.urls")),
    path("dashboard/", include("dashboard.urls")),
    path("operators/", include("autopilot.urls")),
    path("usage/", include("usage.urls")),
    # /gateway/v1/messages is served beside Django, by the gateway's own ASGI app (config.asgi).
    path("admin/", admin.site.urls),
]

handler400 = "plumbing.views.bad_request"
handler403 = "plumbing.views.permission_denied"
handler404 = "plumbing.views.page_not_found"
handler500 = "plumbing.views.server_error"
