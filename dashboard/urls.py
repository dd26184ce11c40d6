"""The operator dashboard's routes, under /dashboard/."""

from __future__ import annotations

from django.urls import path, re_path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("agents/", views.agents, name="agents"),
    path("agents/<uuid:agent_id>/logs", views.agent_logs, name="agent-logs"),
    re_path(
        r"^agents/(?P<agent_id>[0-9a-f-]{36})/(?P<action>stop|start|pause|resume|restart|delete)$",
        views.agent_action,
        name="agent-action",
    ),
    path("scaling/", views.scaling, name="scaling"),
    path("scaling/rules/new", views.rule_create, name="rule-create"),
    path("scaling/rules/<int:rule_id>", views.rule_row, name="rule-row"),
    path("scaling/rules/<int:rule_id>/edit", views.rule_edit, name="rule-edit"),
    path("scaling/rules/<int:rule_id>/toggle", views.rule_toggle, name="rule-toggle"),
    path("scaling/rules/<int:rule_id>/delete", views.rule_delete, name="rule-delete"),
    path("scaling/rules/<int:rule_id>/simulate", views.rule_simulate, name="rule-simulate"),
    path("scaling/simulate", views.rule_simulate_draft, name="rule-simulate-draft"),
    path("scaling/decisions/", views.decisions, name="decisions"),
    path("audit/", views.audit, name="audit"),
]
