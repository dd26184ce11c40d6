"""Console-wide routes: probes, metrics and the favicon."""

from __future__ import annotations

from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

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
]
