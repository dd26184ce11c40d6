from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """The operator dashboard: the fleet, scaling rules and decisions, the audit log."""

    name = "dashboard"
