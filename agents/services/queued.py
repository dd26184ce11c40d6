"""The workers' tasks, found by name. The tasks call the services, so the services name the
tasks they queue instead of importing them; ``AgentsConfig.ready`` loads ``agents.tasks`` in
every process, so each name is known wherever a service runs."""

from __future__ import annotations

from celery import Task, current_app

__all__ = ["PUBLISH_RETRY", "worker_task"]

# A broker that is down is reported within a second or so, not after kombu's default retries.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def worker_task(name: str) -> Task:
    """The registered task called ``name`` (a KeyError names a task that does not exist)."""
    return current_app.tasks[name]
