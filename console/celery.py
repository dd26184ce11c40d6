"""The Celery application shared by web (to queue tasks), worker and beat."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery
from celery.signals import (
    celeryd_after_setup,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["agents", "scaling", "console"])


@app.on_after_configure.connect
def _prepare(sender: Celery, **_: object) -> None:
    from django.conf import settings

    # The server-less broker keeps its queue in a folder that must exist before anyone publishes.
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        Path(settings.CELERY_BROKER_DIR, "control").mkdir(parents=True, exist_ok=True)
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
    }


@celeryd_after_setup.connect
def _consume_this_hosts_queue(sender: str, instance: object, **_: object) -> None:
    # Each worker serves one sandbox host, and takes that host's work from its own queue.
    from agents.tasks import this_host_queue

    instance.app.amqp.queues.select_add(this_host_queue())  # type: ignore[attr-defined]


@worker_ready.connect
def _register_this_host(**_: object) -> None:
    from django.conf import settings
    from django.db import OperationalError

    from agents import sandbox, services

    accel = sandbox.host_accel()
    for attempt in range(10):
        try:
            services.host_register(
                name=settings.SANDBOX_HOST_NAME,
                backend=settings.SANDBOX_BACKEND,
                capacity_vcpus=settings.SANDBOX_HOST_VCPUS,
                capacity_memory_mib=settings.SANDBOX_HOST_MEMORY_MIB,
                accel=accel,
            )
            return
        except OperationalError:  # the database is busy or not up yet: try again shortly
            time.sleep(0.5 * (attempt + 1))
    raise RuntimeError(f"could not register sandbox host {settings.SANDBOX_HOST_NAME}")


@worker_shutdown.connect
def _unregister_this_host(**_: object) -> None:
    from django.conf import settings

    from agents import services

    services.host_set_online(name=settings.SANDBOX_HOST_NAME, online=False)


@worker_process_init.connect
def _close_inherited_connections(**_: object) -> None:
    # A forked pool process must not reuse the parent's database connections.
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        conn.close()
