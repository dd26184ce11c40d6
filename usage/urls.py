"""The usage pages' routes, under /usage/."""

from __future__ import annotations

from django.urls import path

from usage import views

app_name = "usage"

urlpatterns = [
    path("", views.usage, name="usage"),
    path("quotas/", views.quotas, name="quotas"),
]
