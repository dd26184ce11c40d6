"""Celery tasks for budgets, rate limits, idempotency keys and sign-ins. Each calls one service and
returns."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from console import services
from console.idempotency import idempotent_requests_expire

__all__ = [
    "idempotent_requests_expire_task",
    "jwt_families_purge_task",
    "reservations_release_expired_task",
]


# Both sweeps are idempotent, so a retried or redelivered one is harmless, and one that never
# runs is made up by the next.
_SWEEP = {
    "acks_late": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 3,
}


@shared_task(
    name="console.tasks.reservations_release_expired", soft_time_limit=30, time_limit=60, **_SWEEP
)
def reservations_release_expired_task() -> int:
    """Beat's entry point: give back what gateway calls that never settled still reserve."""
    return services.reservations_release_expired()


@shared_task(
    name="console.tasks.idempotent_requests_expire", soft_time_limit=60, time_limit=120, **_SWEEP
)
def idempotent_requests_expire_task() -> int:
    """Beat's entry point: forget Idempotency-Keys past their time."""
    return idempotent_requests_expire()


@shared_task(name="console.tasks.jwt_families_purge", soft_time_limit=60, time_limit=120, **_SWEEP)
def jwt_families_purge_task() -> int:
    """Beat's entry point: forget sign-ins that can issue no more tokens."""
    return services.jwt_families_purge()
