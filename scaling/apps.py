from __future__ import annotations

from django.apps import AppConfig


class ScalingConfig(AppConfig):
    name = "scaling"
    verbose_name = "Scaling"

    def ready(self) -> None:
        # Task registration once the models are loaded: agents queue ``scaling.tasks.wake`` by
        # name from any process, so the name must be known wherever their services run.
        from scaling import tasks  # noqa: F401
