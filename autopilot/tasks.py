"""Celery tasks of the operator agents. Beat runs ``operators_due`` every minute: it starts a
run of each enabled agent whose interval has passed, expires the approvals nobody gave in time,
and ends the runs whose worker went away. ``operator_run_continue`` carries one run on; it is
queued when a run starts and when its last waiting call is decided, and does nothing for a run
that is not ready, so it is safe to repeat."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from autopilot import loop
from operator_agent import selectors, services
from operator_agent.models import OperatorAgent
from plumbing.errors import Conflict

__all__ = ["operator_run_continue", "operators_due"]


@shared_task(name="autopilot.tasks.operators_due", soft_time_limit=30, time_limit=60)
def operators_due() -> int:
    """Start the runs that are due; how many started."""
    services.operator_actions_expire()
    services.operator_runs_reap()
    started = 0
    for agent in OperatorAgent.objects.filter(pk__in=selectors.operator_agents_due()):
        try:
            services.operator_run_start(agent=agent, trigger="schedule")
        except Conflict:  # a run began meanwhile ("run now")
            continue
        started += 1
    return started


@shared_task(
    name="autopilot.tasks.operator_run_continue",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=3,
    soft_time_limit=600,
    time_limit=660,
)
def operator_run_continue(run_id: int) -> str | None:
    """Carry run ``run_id`` on; its status after, or None when it was not ready."""
    run = loop.operator_run_continue(run_id=run_id)
    return None if run is None else run.status
