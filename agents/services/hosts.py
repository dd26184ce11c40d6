"""Sandbox hosts: each worker registers its host and heartbeats it; spawns are placed on a live
host with room; a host whose heartbeat stops is taken offline and its agents failed."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from agents.models import Agent, SandboxHost
from plumbing.errors import CapacityExhausted

__all__ = [
    "host_heartbeat",
    "host_place",
    "host_register",
    "host_set_online",
    "hosts_mark_stale",
    "hosts_usage",
]

log = logging.getLogger(__name__)


def _stale_before() -> datetime:
    """A host last seen before this has missed its heartbeats: it is not alive."""
    return timezone.now() - timedelta(seconds=settings.SANDBOX_HOST_STALE_SECONDS)


def host_register(
    *,
    name: str,
    backend: str,
    capacity_vcpus: int,
    capacity_memory_mib: int,
    accel: str = "",
    relay_url: str = "",
) -> SandboxHost:
    """Record (or refresh) this worker's host as online with its capacity and relay."""
    host, _ = SandboxHost.objects.update_or_create(
        name=name,
        defaults={
            "backend": backend,
            "capacity_vcpus": capacity_vcpus,
            "capacity_memory_mib": capacity_memory_mib,
            "accel": accel,
            "relay_url": relay_url,
            "is_online": True,
            "last_seen_at": timezone.now(),
        },
    )
    return host


def host_set_online(*, name: str, online: bool) -> None:
    SandboxHost.objects.filter(name=name).update(is_online=online, last_seen_at=timezone.now())


def host_heartbeat(*, name: str) -> bool:
    """Record that this worker's host is alive (online again if it had been taken offline).

    False when the host has no row: it never registered, or an operator deleted it.
    """
    updated = SandboxHost.objects.filter(name=name).update(
        is_online=True, last_seen_at=timezone.now()
    )
    return bool(updated)


def hosts_mark_stale() -> list[str]:
    """Take offline the online hosts that missed their heartbeats, and return their names.

    Their agents can no longer be reached: active ones fail with the reason, stopping ones are
    stopped. If the worker comes back, its heartbeat brings the host online again and its
    reconcile stops the sandboxes of those agents.
    """
    now = timezone.now()
    with transaction.atomic():
        stale = list(
            SandboxHost.objects.select_for_update()
            .filter(is_online=True, last_seen_at__lt=_stale_before())
            .values_list("pk", "name", "last_seen_at")
        )
        # update() leaves last_seen_at (auto_now) alone: it still says when the host last answered.
        SandboxHost.objects.filter(pk__in=[pk for pk, _, _ in stale]).update(is_online=False)
        for pk, name, last_seen_at in stale:
            reason = (
                f"host {name} stopped answering"
                f" (no heartbeat since {last_seen_at:%Y-%m-%d %H:%M:%S} UTC)"
            )
            on_host = Agent.objects.filter(host_id=pk)
            on_host.filter(status__in=Agent.ACTIVE_STATUSES).update(
                status=Agent.Status.FAILED, endpoint="", stopped_at=now, last_error=reason
            )
            on_host.filter(status=Agent.Status.STOPPING).update(
                status=Agent.Status.STOPPED, endpoint="", stopped_at=now
            )
    for _, name, last_seen_at in stale:
        log.warning("sandbox host %s stopped answering (last seen %s): offline", name, last_seen_at)
    return [name for _, name, _ in stale]


def hosts_usage(*, host_ids: list[int]) -> dict[int, dict[str, int]]:
    """vCPUs, memory and agents in use on each host, by its active agents."""
    rows = (
        Agent.objects.filter(host_id__in=host_ids, status__in=Agent.ACTIVE_STATUSES)
        .values("host_id")
        .annotate(vcpus=Sum("vcpus"), memory=Sum("memory_mib"), agents=Count("id"))
        .order_by()
    )
    usage = {host_id: {"vcpus": 0, "memory": 0, "agents": 0} for host_id in host_ids}
    for row in rows:
        usage[row["host_id"]] = {
            "vcpus": row["vcpus"],
            "memory": row["memory"],
            "agents": row["agents"],
        }
    return usage


def host_place(*, backend: str, vcpus: int, memory_mib: int) -> SandboxHost:
    """The live host with the most room left that fits; call inside the spawn's transaction.

    A host is live when it is online, not draining, and heartbeated within the stale time. The
    hosts' rows stay locked until it commits, so concurrent spawns never overfill a host.
    """
    online = list(
        SandboxHost.objects.select_for_update()
        .filter(Q(is_online=True) & Q(is_draining=False), backend=backend)
        .order_by("pk")
    )
    # Hosts not yet marked offline by hosts_mark_stale, but already silent, are skipped too.
    stale_before = _stale_before()
    hosts = [host for host in online if host.last_seen_at >= stale_before]
    stale = [host for host in online if host.last_seen_at < stale_before]
    usage = hosts_usage(host_ids=[host.pk for host in hosts])
    fitting = [
        host
        for host in hosts
        if usage[host.pk]["vcpus"] + vcpus <= host.capacity_vcpus
        and usage[host.pk]["memory"] + memory_mib <= host.capacity_memory_mib
    ]
    if not fitting:
        raise CapacityExhausted(
            f"no sandbox host has room for {vcpus} vCPUs and {memory_mib} MiB"
            if hosts
            else f"no {backend} sandbox host is online",
            details={
                "requested": {"vcpus": vcpus, "memory_mib": memory_mib},
                "hosts": [
                    {
                        "name": h.name,
                        "free_vcpus": h.capacity_vcpus - usage[h.pk]["vcpus"],
                        "free_memory_mib": h.capacity_memory_mib - usage[h.pk]["memory"],
                    }
                    for h in hosts
                ],
                "stale_hosts": [
                    {"name": h.name, "last_seen_at": h.last_seen_at.isoformat()} for h in stale
                ],
            },
        )
    return max(fitting, key=lambda h: (h.capacity_vcpus - usage[h.pk]["vcpus"], -h.pk))
