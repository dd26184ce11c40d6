"""The Celery application shared by web (to queue tasks), worker and beat."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init
from django.conf import settings
from django.db import connections

from plumbing import logs  # noqa: F401 - request ids across tasks, the worker's log format

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["agents", "scaling", "console", "autopilot"])


@app.on_after_configure.connect
def _prepare(sender: Celery, **_: object) -> None:
    # For beat's scheduler (config/beat.py): celery-redbeat reads its settings under their own
    # names only, not under Django's CELERY_ prefix.
    sender.conf.update(
        redbeat_redis_url=settings.BEAT_REDIS_URL,
        redbeat_redis_options={
            "socket_timeout": settings.BEAT_LOCK_SECONDS,
            "socket_connect_timeout": settings.BEAT_LOCK_SECONDS,
        },
        redbeat_lock_timeout=settings.BEAT_LOCK_SECONDS,
    )
    sender.conf.beat_schedule = {
        "reconcile-sandboxes": {
            "task": "agents.tasks.agents_reconcile",
            "schedule": settings.RECONCILE_INTERVAL_SECONDS,
        },
        "refill-warm-pools": {
            "task": "agents.tasks.warm_pools_refill",
            "schedule": settings.RECONCILE_INTERVAL_SECONDS,
        },
        "reap-idle-agents": {
            "task": "agents.tasks.agents_reap_idle",
            "schedule": settings.RECONCILE_INTERVAL_SECONDS,
        },
        "mark-stale-hosts": {
            "task": "agents.tasks.hosts_mark_stale",
            "schedule": settings.SANDBOX_HOST_HEARTBEAT_SECONDS,
        },
        "release-expired-reservations": {
            "task": "console.tasks.reservations_release_expired",
            "schedule": 60.0,
        },
        "purge-ended-sign-ins": {
            "task": "console.tasks.jwt_families_purge",
            "schedule": 3600.0,
        },
        "expire-idempotency-keys": {
            "task": "console.tasks.idempotent_requests_expire",
            "schedule": 3600.0,
        },
        # Operator agents due a run; approvals nobody gave in time.
        "operator-agents": {
            "task": "autopilot.tasks.operators_due",
            "schedule": 60.0,
        },
        # Every 5 s, the shortest evaluation interval a rule may have; each rule is evaluated
        # on its own interval.
        "evaluate-scaling-rules": {
            "task": "scaling.tasks.evaluate_due",
            "schedule": 5.0,
        },
    }


@worker_process_init.connect
def _close_inherited_connections(**_: object) -> None:
    # A forked pool process must not reuse the parent's database connections.
    for conn in connections.all(initialized_only=True):
        conn.close()
