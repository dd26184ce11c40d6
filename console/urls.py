"""The console's routes."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from agents import views as agent_views
from console import views
from console.authentication import login_page_throttled

hypercore = SimpleRouter(trailing_slash=False)
hypercore.register("v1/agents", agent_views.HypercoreAgentViewSet, basename="hypercore-agent")

urlpatterns = [
    path("", views.home, name="home"),
    # Browsers ask for /favicon.ico whatever the page links.
    path("favicon.ico", RedirectView.as_view(url=static("console/favicon.svg"), permanent=True)),
    path("accounts/login/", login_page_throttled(auth_views.LoginView.as_view()), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    # Kubernetes' names for the same probes.
    path("healthz", views.health, name="healthz"),
    path("livez", views.health, name="livez"),
    path("readyz", views.ready, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("metrics/targets", views.metrics_targets, name="metrics-targets"),
    path("agents/<uuid:agent_id>/v1/agent/chat", agent_views.agent_chat, name="agent-chat"),
    path("agents/<uuid:agent_id>/metrics", agent_views.agent_metrics, name="agent-metrics"),
    path("agents/<uuid:agent_id>/health", agent_views.agent_health, name="agent-health"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("console.api.urls")),
    path("dashboard/", include("console.dashboard.urls")),
    path("usage/", include("console.usage.urls")),
    path("keys/", include("console.keys.urls")),
    path("chat/", include("agents.chat_urls")),
    path("admin/login/", login_page_throttled(admin.site.login)),
    path("admin/", admin.site.urls),
    path("", include(hypercore.urls)),
]

handler400 = "console.views.bad_request"
handler403 = "console.views.permission_denied"
handler404 = "console.views.page_not_found"
handler500 = "console.views.server_error"
