from __future__ import annotations

from django.apps import AppConfig


class OperatorAgentConfig(AppConfig):
    """Operator agents, their runs, and the action log with its approvals."""

    name = "operator_agent"
    verbose_name = "Operator agents"
    default_auto_field = "django.db.models.BigAutoField"
