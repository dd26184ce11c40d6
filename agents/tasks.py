"""Celery tasks for the agent lifecycle. Each takes ids, calls one service, and returns."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from agents import services

__all__ = ["agent_boot_task", "agent_teardown_task", "agents_reconcile"]

# Boots and teardowns are idempotent on the agent id, so a redelivered task is harmless.
_LIFECYCLE = {
    "acks_late": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 5,
    "soft_time_limit": 90,
    "time_limit": 120,
}


@shared_task(name="agents.tasks.agent_boot", **_LIFECYCLE)
def agent_boot_task(agent_id: str, queued_at: float | None = None) -> None:
    services.agent_boot(agent_id=agent_id, queued_at=queued_at)


@shared_task(name="agents.tasks.agent_teardown", **_LIFECYCLE)
def agent_teardown_task(agent_id: str) -> None:
    services.agent_teardown(agent_id=agent_id)


@shared_task(name="agents.tasks.agents_reconcile", soft_time_limit=120, time_limit=180)
def agents_reconcile() -> dict[str, int]:
    return services.agents_reconcile()
