"""Console-wide routes: probes, metrics, the API's description and the favicon."""

from __future__ import annotations

from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from plumbing import views

urlpatterns = [
    # Browsers ask for /favicon.ico whatever the page links.
    path("favicon.ico", RedirectView.as_view(url=static("console/favicon.svg"), permanent=True)),
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    # Kubernetes' names for the same probes.
    path("healthz", views.health, name="healthz"),
    path("livez", views.health, name="livez"),
    path("readyz", views.ready, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
