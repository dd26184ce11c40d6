from __future__ import annotations

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents"

    def ready(self) -> None:
        # Django's place for signal receivers and task registration, once the models are loaded:
        # the worker's host receivers, and the tasks that services queue by name.
        from agents import tasks, worker  # noqa: F401
