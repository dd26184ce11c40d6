"""Celery tasks of the autoscaler. Beat runs ``evaluate_due`` every few seconds; it queues one
``evaluate`` per rule whose interval has passed. Each takes a rule id, and evaluating a rule
that is not due (a redelivery, a second queueing) does nothing, so both are safe to repeat.
``wake`` is queued by name by the agents' services when a request waits for one of an owner's
agents and none runs; it evaluates the owner's pool at once if it is at zero."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import OperationalError

from scaling import selectors, services

__all__ = ["evaluate", "evaluate_due", "wake"]


@shared_task(name="scaling.tasks.evaluate_due", soft_time_limit=30, time_limit=60)
def evaluate_due() -> int:
    """Queue an evaluation of each enabled rule that is due."""
    rule_ids = selectors.scaling_rules_due()
    for rule_id in rule_ids:
        evaluate.delay(rule_id)
    return len(rule_ids)


# A rule's evaluation: retried when the database is busy, bounded in time.
_EVALUATION: dict[str, Any] = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 3,
    "soft_time_limit": 60,
    "time_limit": 90,
}


@shared_task(name="scaling.tasks.evaluate", acks_late=True, **_EVALUATION)
def evaluate(rule_id: int) -> str | None:
    """Evaluate one rule and apply its decision; the decision's action, or None when the rule
    was not due."""
    decision = services.scaling_rule_evaluate(rule_id=rule_id)
    return None if decision is None else decision.action


@shared_task(name="scaling.tasks.wake", **_EVALUATION)
def wake(owner_id: int) -> str | None:
    """Answer the owner's waiting demand: wake their pool if it is at zero. The decision's
    action, or None when no evaluation was due and none was needed."""
    decision = services.scaling_wake(owner_id=owner_id)
    return None if decision is None else decision.action
