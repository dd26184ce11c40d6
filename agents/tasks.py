"""Celery tasks for the agent lifecycle. Each takes ids, calls one service, and returns.

Sandbox work runs on the agent's host: its tasks go to that host's queue (``sandboxes.<host>``),
which only that host's worker consumes.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from agents import services
from agents.models import SandboxHost

__all__ = [
    "agent_boot_task",
    "agent_freeze_task",
    "agent_halt_task",
    "agent_teardown_task",
    "agent_thaw_task",
    "agents_reap_idle",
    "agents_reconcile",
    "agents_reconcile_host",
    "hosts_mark_stale",
    "warm_pool_refill_task",
    "warm_pools_refill",
]

# Lifecycle tasks are idempotent on the agent id, so a redelivered task is harmless.
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


@shared_task(name="agents.tasks.agent_halt", **_LIFECYCLE)
def agent_halt_task(agent_id: str, then_boot: bool = False) -> None:
    services.agent_halt(agent_id=agent_id, then_boot=then_boot)


@shared_task(name="agents.tasks.agent_teardown", **_LIFECYCLE)
def agent_teardown_task(agent_id: str) -> None:
    services.agent_teardown(agent_id=agent_id)


@shared_task(name="agents.tasks.agent_freeze", **_LIFECYCLE)
def agent_freeze_task(agent_id: str, to_disk: bool = False) -> None:
    services.agent_freeze(agent_id=agent_id, to_disk=to_disk)


@shared_task(name="agents.tasks.agent_thaw", **_LIFECYCLE)
def agent_thaw_task(agent_id: str, queued_at: float | None = None) -> None:
    services.agent_thaw(agent_id=agent_id, queued_at=queued_at)


@shared_task(name="agents.tasks.agents_reconcile_host", soft_time_limit=120, time_limit=180)
def agents_reconcile_host(host_name: str, restarted: bool = False) -> dict[str, int]:
    return services.agents_reconcile(host_name=host_name, restarted=restarted)


@shared_task(name="agents.tasks.agents_reconcile", soft_time_limit=30, time_limit=60)
def agents_reconcile() -> int:
    """Beat's entry point: ask every online host to reconcile its own sandboxes."""
    hosts = list(SandboxHost.objects.filter(is_online=True).values_list("name", flat=True))
    for name in hosts:
        agents_reconcile_host.apply_async((name,), queue=SandboxHost.queue_of(name))
    return len(hosts)


@shared_task(name="agents.tasks.hosts_mark_stale", soft_time_limit=30, time_limit=60)
def hosts_mark_stale() -> list[str]:
    """Beat's entry point: take offline the hosts whose worker stopped heartbeating."""
    return services.hosts_mark_stale()


@shared_task(name="agents.tasks.warm_pool_refill", **_LIFECYCLE)
def warm_pool_refill_task(pool_id: int) -> int:
    return services.warm_pool_refill(pool_id=pool_id)


@shared_task(name="agents.tasks.warm_pools_refill", soft_time_limit=60, time_limit=90)
def warm_pools_refill() -> int:
    return services.warm_pools_refill()


@shared_task(name="agents.tasks.agents_reap_idle", soft_time_limit=60, time_limit=90)
def agents_reap_idle() -> int:
    return services.agents_reap_idle()


def this_host_queue() -> str:
    return SandboxHost.queue_of(settings.SANDBOX_HOST_NAME)
