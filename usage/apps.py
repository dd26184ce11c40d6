from __future__ import annotations

from django.apps import AppConfig


class UsageConfig(AppConfig):
    """The usage pages: spend and tokens over time, and the quotas."""

    name = "usage"
