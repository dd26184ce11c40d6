"""The key page's routes, under /keys/."""

from __future__ import annotations

from django.urls import path

from console.keys import views

app_name = "keys"

urlpatterns = [
    path("", views.keys, name="keys"),
    path("new", views.key_create, name="create"),
    path("<int:key_id>/revoke", views.key_revoke, name="revoke"),
]
