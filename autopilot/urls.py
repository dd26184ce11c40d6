"""The operator agents' pages, under /operators/."""

from __future__ import annotations

from django.urls import path, re_path

from autopilot import views

app_name = "autopilot"

urlpatterns = [
    path("", views.agents, name="agents"),
    path("new", views.agent_create, name="agent-create"),
    path("<int:agent_id>/", views.agent, name="agent"),
    path("<int:agent_id>/run", views.agent_run, name="agent-run"),
    path("approvals", views.approvals, name="approvals"),
    re_path(
        r"^actions/(?P<action_id>[0-9]+)/(?P<decision>approve|deny)$",
        views.action_decide,
        name="action-decide",
    ),
]
