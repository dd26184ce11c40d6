"""Sandbox hosts: each worker registers its host and heartbeats it; spawns are placed on a live
host with room; a host whose heartbeat stops is taken offline and its agents failed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from agents.models import Agent, SandboxHost
from plumbing.errors import CapacityExhausted
from vmdriver.gpus import GpuUnit, gpus_from_inventory, units_of

__all__ = [
    "GpuRequest",
    "Placement",
    "gpu_summary",
    "gpus_free",
    "gpus_held",
    "gpus_reclaim",
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
    gpus: list[dict[str, Any]] | None = None,
) -> SandboxHost:
    """Record (or refresh) this worker's host as online with its capacity, relay and GPUs."""
    host, _ = SandboxHost.objects.update_or_create(
        name=name,
        defaults={
            "backend": backend,
            "capacity_vcpus": capacity_vcpus,
            "capacity_memory_mib": capacity_memory_mib,
            "accel": accel,
            "relay_url": relay_url,
            "gpus": gpus or [],
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
            on_host.filter(status__in=Agent.HOLDING_STATUSES).update(
                status=Agent.Status.FAILED, endpoint="", stopped_at=now, last_error=reason
            )
            on_host.filter(status=Agent.Status.STOPPING).update(
                status=Agent.Status.STOPPED, endpoint="", stopped_at=now
            )
    for _, name, last_seen_at in stale:
        log.warning("sandbox host %s stopped answering (last seen %s): offline", name, last_seen_at)
    return [name for _, name, _ in stale]


def hosts_usage(*, host_ids: list[int]) -> dict[int, dict[str, int]]:
    """vCPUs, memory and agents in use on each host: the vCPUs of its active agents, the
    memory of those and of its paused ones (which use no CPU but keep their memory)."""
    rows = (
        Agent.objects.filter(host_id__in=host_ids, status__in=Agent.HOLDING_STATUSES)
        .values("host_id")
        .annotate(
            vcpus=Sum("vcpus", filter=Q(status__in=Agent.ACTIVE_STATUSES)),
            memory=Sum("memory_mib"),
            agents=Count("id"),
        )
        .order_by()
    )
    usage = {host_id: {"vcpus": 0, "memory": 0, "agents": 0} for host_id in host_ids}
    for row in rows:
        usage[row["host_id"]] = {
            "vcpus": row["vcpus"] or 0,
            "memory": row["memory"],
            "agents": row["agents"],
        }
    return usage


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """The GPUs a spawn asks for: ``count`` units of a model whose name holds ``model`` (any,
    when empty), MIG slices of ``profile`` or, when it is empty, whole GPUs."""

    count: int
    model: str = ""
    profile: str = ""

    def matches(self, unit: GpuUnit) -> bool:
        return unit.profile == self.profile and self.model.lower() in unit.model.lower()

    def describe(self) -> str:
        kind = f"{self.profile} MIG slice" if self.profile else "whole GPU"
        return f"{self.count} {kind}{'s' if self.count > 1 else ''}" + (
            f" of a {self.model}" if self.model else ""
        )


def gpus_held(*, host_ids: list[int], but: str | None = None) -> dict[int, set[str]]:
    """The UUIDs of the GPUs and MIG slices each host's active and paused agents hold (``but``
    that agent's own)."""
    rows = Agent.objects.filter(
        host_id__in=host_ids, status__in=Agent.HOLDING_STATUSES, gpu_count__gt=0
    ).exclude(pk=but)
    held: dict[int, set[str]] = {host_id: set() for host_id in host_ids}
    for host_id, units in rows.values_list("host_id", "gpus"):
        held[host_id].update(unit["uuid"] for unit in units)
    return held


def gpus_free(host: SandboxHost, held: set[str]) -> list[GpuUnit]:
    """The host's GPUs and MIG slices that no active agent holds."""
    return [unit for unit in units_of(gpus_from_inventory(host.gpus)) if unit.uuid not in held]


def _gpus_for(request: GpuRequest | None, free: list[GpuUnit]) -> list[GpuUnit] | None:
    """The units ``request`` takes of ``free`` (none asked: none), or None when too few."""
    if request is None or request.count == 0:
        return []
    matching = [unit for unit in free if request.matches(unit)]
    return matching[: request.count] if len(matching) >= request.count else None


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a spawn goes, and the GPUs or MIG slices of that host it is given."""

    host: SandboxHost
    gpus: list[GpuUnit]


def host_place(
    *, backend: str, vcpus: int, memory_mib: int, gpu: GpuRequest | None = None
) -> Placement:
    """The live host with the most room left that fits (with the GPUs ``gpu`` asks for free);
    call inside the spawn's transaction.

    A host is live when it is online, not draining, and heartbeated within the stale time. The
    hosts' rows stay locked until it commits, so concurrent spawns never overfill a host, nor
    give one GPU twice.
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
    held = gpus_held(host_ids=[host.pk for host in hosts])
    free = {host.pk: gpus_free(host, held[host.pk]) for host in hosts}
    given = {host.pk: _gpus_for(gpu, free[host.pk]) for host in hosts}
    fitting = [
        host
        for host in hosts
        if usage[host.pk]["vcpus"] + vcpus <= host.capacity_vcpus
        and usage[host.pk]["memory"] + memory_mib <= host.capacity_memory_mib
        and given[host.pk] is not None
    ]
    if not fitting:
        wanted = f"{vcpus} vCPUs and {memory_mib} MiB"
        if gpu is not None and gpu.count:
            wanted += f" with {gpu.describe()} free"
        requested: dict[str, Any] = {"vcpus": vcpus, "memory_mib": memory_mib}
        if gpu is not None and gpu.count:
            requested["gpus"] = {"count": gpu.count, "model": gpu.model, "profile": gpu.profile}
        raise CapacityExhausted(
            f"no sandbox host has room for {wanted}"
            if hosts
            else f"no {backend} sandbox host is online",
            details={
                "requested": requested,
                "hosts": [
                    {
                        "name": h.name,
                        "free_vcpus": h.capacity_vcpus - usage[h.pk]["vcpus"],
                        "free_memory_mib": h.capacity_memory_mib - usage[h.pk]["memory"],
                    }
                    | ({"free_gpus": gpu_summary(free[h.pk])} if "gpus" in requested else {})
                    for h in hosts
                ],
                "stale_hosts": [
                    {"name": h.name, "last_seen_at": h.last_seen_at.isoformat()} for h in stale
                ],
            },
        )
    host = max(fitting, key=lambda h: (h.capacity_vcpus - usage[h.pk]["vcpus"], -h.pk))
    return Placement(host=host, gpus=given[host.pk] or [])


def gpu_summary(units: list[GpuUnit]) -> list[dict[str, Any]]:
    """Free units by model and profile, with their count: what a refusal shows."""
    counts: dict[tuple[str, str], int] = {}
    for unit in units:
        counts[(unit.model, unit.profile)] = counts.get((unit.model, unit.profile), 0) + 1
    return [
        {"model": model, "profile": profile, "count": n}
        for (model, profile), n in sorted(counts.items())
    ]


def gpus_reclaim(*, agent: Agent) -> list[GpuUnit]:
    """The GPUs for an agent started again on its host: those it had, if no one took them
    meanwhile, else as many free ones of the same kind; ``CapacityExhausted`` when its host
    has too few free now. Call inside the start's transaction (it locks the host's row)."""
    if not agent.gpu_count or agent.host_id is None:
        return []
    host = SandboxHost.objects.select_for_update().get(pk=agent.host_id)
    free = gpus_free(host, gpus_held(host_ids=[host.pk], but=str(agent.pk))[host.pk])
    request = GpuRequest(agent.gpu_count, agent.gpu_model, agent.gpu_profile)
    mine = {unit["uuid"] for unit in agent.gpus}
    # Its own units first, where they are still free.
    ordered = sorted(free, key=lambda unit: unit.uuid not in mine)
    units = _gpus_for(request, ordered)
    if units is None:
        raise CapacityExhausted(
            f"host {host.name} has not {request.describe()} free now",
            details={"host": host.name, "free_gpus": gpu_summary(free)},
        )
    return units
