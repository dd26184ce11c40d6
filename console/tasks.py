"""Celery tasks for budgets, rate limits and idempotency keys. Each calls one service and
returns."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from console import services

__all__ = ["idempotent_requests_expire_task", "reservations_release_expired_task"]


# Releasing what has expired is idempotent, so a retried or redelivered sweep is harmless; a
# sweep that never runs is made up by the next one, a minute later.
@shared_task(
    name="console.tasks.reservations_release_expired",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=3,
    soft_time_limit=30,
    time_limit=60,
)
def reservations_release_expired_task() -> int:
    """Beat's entry point: give back what gateway calls that never settled still reserve."""
    return services.reservations_release_expired()


@shared_task(
    name="console.tasks.idempotent_requests_expire",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=3,
    soft_time_limit=60,
    time_limit=120,
)
def idempotent_requests_expire_task() -> int:
    """Beat's entry point: forget Idempotency-Keys past their time."""
    return services.idempotent_requests_expire()
