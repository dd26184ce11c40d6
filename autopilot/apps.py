from __future__ import annotations

from django.apps import AppConfig


class AutopilotConfig(AppConfig):
    """Operator agents at work: their loop, tasks and pages."""

    name = "autopilot"
    verbose_name = "Autopilot"

    def ready(self) -> None:
        # Task registration once the models are loaded: operator_agent's services queue
        # ``autopilot.tasks.operator_run_continue`` by name from any process.
        from autopilot import tasks  # noqa: F401
