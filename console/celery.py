"""The Celery application shared by web (to queue tasks), worker and beat."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["agents", "scaling", "console"])


@app.on_after_configure.connect
def _prepare(sender: Celery, **_: object) -> None:
    from django.conf import settings

    # The server-less broker keeps its queue in a folder that must exist before anyone publishes.
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        Path(settings.CELERY_BROKER_DIR).mkdir(parents=True, exist_ok=True)
    sender.conf.beat_schedule = {
        "reconcile-sandboxes": {
            "task": "agents.tasks.agents_reconcile",
            "schedule": settings.RECONCILE_INTERVAL_SECONDS,
        },
    }


@worker_process_init.connect
def _close_inherited_connections(**_: object) -> None:
    # A forked pool process must not reuse the parent's database connections.
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        conn.close()
