"""Sandbox hosts: each worker registers its host; spawns are placed on a host with room."""

from __future__ import annotations

from django.db.models import Count, Q, Sum
from django.utils import timezone

from agents.models import Agent, SandboxHost
from console.errors import CapacityExhausted

__all__ = ["host_place", "host_register", "host_set_online", "hosts_usage"]


def host_register(
    *, name: str, backend: str, capacity_vcpus: int, capacity_memory_mib: int, accel: str = ""
) -> SandboxHost:
    """Record (or refresh) this worker's host as online with its capacity."""
    host, _ = SandboxHost.objects.update_or_create(
        name=name,
        defaults={
            "backend": backend,
            "capacity_vcpus": capacity_vcpus,
            "capacity_memory_mib": capacity_memory_mib,
            "accel": accel,
            "is_online": True,
            "last_seen_at": timezone.now(),
        },
    )
    return host


def host_set_online(*, name: str, online: bool) -> None:
    SandboxHost.objects.filter(name=name).update(is_online=online, last_seen_at=timezone.now())


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
    """The online host with the most room left that fits; call inside the spawn's transaction.

    The hosts' rows stay locked until it commits, so concurrent spawns never overfill a host.
    """
    hosts = list(
        SandboxHost.objects.select_for_update()
        .filter(Q(is_online=True) & Q(is_draining=False), backend=backend)
        .order_by("pk")
    )
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
            },
        )
    return max(fitting, key=lambda h: (h.capacity_vcpus - usage[h.pk]["vcpus"], -h.pk))
