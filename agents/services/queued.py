"""The workers' tasks, found by name. The tasks call the services, so the services name the
tasks they queue instead of importing them; ``AgentsConfig.ready`` loads ``agents.tasks`` in
every process, so each name is known wherever a service runs."""

from __future__ import annotations

from celery import Task, current_app

__all__ = ["worker_task"]


def worker_task(name: str) -> Task:
    """The registered task called ``name`` (a KeyError names a task that does not exist)."""
    return current_app.tasks[name]
