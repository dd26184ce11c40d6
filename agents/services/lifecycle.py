"""The agent lifecycle: spawn, boot, stop, start, restart, delete, reconcile.

Spawning and the other requests change the database in one transaction and queue the work on the
agent's host after commit; the tasks do the sandbox work there, each safe to run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from agents import sandbox
from agents.metrics import SPAWN_DURATION, SPAWN_TOTAL
from agents.models import Agent, SandboxHost, WarmPool
from agents.services.hosts import GpuRequest, gpus_reclaim, host_place
from agents.services.mcp import McpServerSpec, agent_mcp_servers_record
from agents.services.queued import PUBLISH_RETRY, worker_task
from agents.services.warm import AgentTemplate, pool_owner, warm_claim
from console.models import Quota, User
from console.services import audit_record, quota_get, user_check_active
from plumbing.crypto import encrypt
from plumbing.errors import (
    AgentNotRunning,
    BadRequest,
    CapacityExhausted,
    QuotaExceeded,
    outages_refused,
)
from vmdriver import SandboxNotFound, VmDriverError, VmState
from vmdriver.gpus import GpuUnit

__all__ = [
    "agent_boot",
    "agent_destroy",
    "agent_halt",
    "agent_log_tail",
    "agent_record",
    "agent_restart",
    "agent_spawn",
    "agent_start",
    "agent_stop",
    "agent_teardown",
    "agents_idle",
    "agents_reconcile",
    "agents_stop_all",
    "agents_stop_idle",
    "warm_pool_refill",
    "warm_pools_refill",
]

log = logging.getLogger(__name__)
_STATUS = Agent.Status


def _queue(agent: Agent) -> str | None:
    return agent.host.queue if agent.host_id and agent.host else None


_BOOT = "agents.tasks.agent_boot"
_HALT = "agents.tasks.agent_halt"
_TEARDOWN = "agents.tasks.agent_teardown"
_FREEZE = "agents.tasks.agent_freeze"
_THAW = "agents.tasks.agent_thaw"


def _queue_after_commit(
    task: str, args: tuple[Any, ...], *, queue: str | None, undo: Callable[[], None]
) -> None:
    """Queue the task named ``task`` once the transaction commits. When the broker cannot take
    it, ``undo`` reverts what the transaction recorded and ``ServiceUnavailable`` names the
    broker: nothing waits for a task that was never queued (a retry with the same
    Idempotency-Key runs again)."""

    def send() -> None:
        try:
            with outages_refused():
                worker_task(task).apply_async(args, queue=queue, retry_policy=PUBLISH_RETRY)
        except Exception:
            undo()
            raise

    transaction.on_commit(send)


def _limit(name: str, limit: int, used: int, requested: int) -> None:
    if used + requested > limit:
        raise QuotaExceeded(
            f"this would exceed your {name} quota ({used} used of {limit})",
            details={"limit": name, "value": limit, "used": used, "requested": requested},
        )


def agent_spawn(
    *,
    owner: User,
    model: str | None = None,
    name: str = "",
    system_prompt: str = "",
    vcpus: int = 1,
    memory_mib: int = 512,
    max_concurrent_sessions: int = 100,
    anthropic_api_key: str = "",
    gpu: GpuRequest | None = None,
    builtin_tools: list[str] | None = None,
    mcp_servers: tuple[McpServerSpec, ...] = (),
    console_mcp: bool = False,
    on_idle: str | None = None,
    architecture: str = Agent.Architecture.BUILTIN,
) -> Agent:
    """Check the owner's quota, then claim a matching warm agent, or place a new one on a host
    with room (and the GPUs ``gpu`` asks for free) and record it pending, in one transaction;
    its boot is queued after commit. An agent with GPUs, a choice of built-in tools, MCP
    servers, the console's MCP tools or another architecture than the built-in loop is never a
    warm one (a warm one booted without them). ``on_idle`` says whether the idle reaper stops
    it or pauses it (by default: stops it, or for a warm one as its pool says)."""
    user_check_active(user=owner)
    if (mcp_servers or console_mcp) and settings.SANDBOX_BACKEND == "qemu":
        raise BadRequest(
            "MCP servers are for agents on process hosts: the microVM guest's image carries "
            "no MCP client",
            details={"backend": settings.SANDBOX_BACKEND},
        )
    _architecture_check(architecture, memory_mib)
    if (mcp_servers or console_mcp) and architecture != Agent.Architecture.BUILTIN:
        raise BadRequest(
            "MCP servers are offered by the built-in loop only: an agent of the Claude Agent "
            "SDK is given none",
            details={"architecture": architecture},
        )
    template = AgentTemplate(
        model=model or settings.DEFAULT_AGENT_MODEL,
        system_prompt=system_prompt,
        vcpus=vcpus,
        memory_mib=memory_mib,
        max_concurrent_sessions=max_concurrent_sessions,
    )
    key = encrypt(anthropic_api_key) if anthropic_api_key else ""
    with transaction.atomic():
        # Locking the quota row serializes concurrent spawns of one user, so the count is exact.
        quota = Quota.objects.select_for_update().get(pk=quota_get(user=owner).pk)
        # A paused agent keeps its place: a chat turn resumes it with no quota check.
        used = Agent.objects.filter(owner=owner, status__in=Agent.HOLDING_STATUSES).aggregate(
            count=Count("id"),
            vcpus=Sum("vcpus"),
            memory=Sum("memory_mib"),
            gpus=Sum("gpu_count"),
        )
        _limit("max_agents", quota.max_agents, used["count"], 1)
        _limit("max_total_vcpus", quota.max_total_vcpus, used["vcpus"] or 0, vcpus)
        _limit("max_total_memory_mib", quota.max_total_memory_mib, used["memory"] or 0, memory_mib)
        if gpu is not None and gpu.count:
            _limit("max_gpus", quota.max_gpus, used["gpus"] or 0, gpu.count)
        tooled = builtin_tools is not None or mcp_servers or console_mcp
        tooled = tooled or architecture != Agent.Architecture.BUILTIN
        if tooled or (gpu is not None and gpu.count):
            agent = agent_record(
                template=template,
                owner=owner,
                name=name,
                anthropic_key=key,
                gpu=gpu if gpu is not None and gpu.count else None,
                builtin_tools=builtin_tools,
                console_mcp=console_mcp,
                architecture=architecture,
            )
            agent_mcp_servers_record(agent=agent, servers=mcp_servers)
            return _with_on_idle(agent, on_idle)
        claimed = warm_claim(template=template, owner=owner, name=name, anthropic_key=key)
        if claimed is not None:
            return _with_on_idle(claimed, on_idle)
        agent = agent_record(template=template, owner=owner, name=name, anthropic_key=key)
        return _with_on_idle(agent, on_idle)


def _with_on_idle(agent: Agent, on_idle: str | None) -> Agent:
    if on_idle is not None and agent.on_idle != on_idle:
        Agent.objects.filter(pk=agent.pk).update(on_idle=on_idle)
        agent.on_idle = on_idle
    return agent


# The Claude Code CLI alone holds about 230 MiB, beside the runtime.
SDK_MIN_MEMORY_MIB = 512


def _architecture_check(architecture: str, memory_mib: int) -> None:
    """Refuse an architecture this console's hosts cannot run, with the reason."""
    if architecture == Agent.Architecture.BUILTIN:
        return
    if architecture not in Agent.Architecture.values:
        raise BadRequest(
            f"unknown architecture {architecture!r}",
            details={"architecture": [f"One of {', '.join(Agent.Architecture.values)}."]},
        )
    if settings.SANDBOX_BACKEND == "qemu":
        raise BadRequest(
            "the Claude Agent SDK runs on process hosts only: the microVM guest's image carries "
            "no Claude Agent SDK",
            details={"backend": settings.SANDBOX_BACKEND, "architecture": architecture},
        )
    if problem := sandbox.architecture_problem(architecture):
        raise BadRequest(problem, details={"architecture": architecture})
    if memory_mib < SDK_MIN_MEMORY_MIB:
        raise BadRequest(
            f"an agent of the Claude Agent SDK needs at least {SDK_MIN_MEMORY_MIB} MiB of "
            "memory: its Claude Code CLI alone holds about 230 MiB",
            details={"memory": [f"At least {SDK_MIN_MEMORY_MIB} for {architecture}."]},
        )


def agent_record(
    *,
    template: AgentTemplate,
    owner: User,
    name: str = "",
    anthropic_key: str = "",
    warm_pool: WarmPool | None = None,
    gpu: GpuRequest | None = None,
    builtin_tools: list[str] | None = None,
    console_mcp: bool = False,
    architecture: str = Agent.Architecture.BUILTIN,
) -> Agent:
    """Place a new agent on a host with room and record it pending; boot it after commit.
    Call inside a transaction (placement locks the hosts until it commits)."""
    placed = host_place(
        backend=settings.SANDBOX_BACKEND,
        vcpus=template.vcpus,
        memory_mib=template.memory_mib,
        gpu=gpu,
    )
    host = placed.host
    agent = Agent.objects.create(
        owner=owner,
        name=name,
        **template.fields(),
        **_gpu_fields(gpu, placed.gpus),
        backend=settings.SANDBOX_BACKEND,
        host=host,
        warm_pool=warm_pool,
        sandbox_id=str(uuid.uuid4()),
        anthropic_key_encrypted=anthropic_key,
        builtin_tools=builtin_tools,
        console_mcp=console_mcp,
        architecture=architecture,
    )
    _queue_after_commit(
        _BOOT,
        (str(agent.pk), time.time()),
        queue=host.queue,
        undo=Agent.objects.filter(pk=agent.pk, status=_STATUS.PENDING).delete,
    )
    return agent


def _gpu_fields(gpu: GpuRequest | None, units: list[GpuUnit]) -> dict[str, object]:
    if gpu is None or not gpu.count:
        return {}
    return {
        "gpu_count": gpu.count,
        "gpu_model": gpu.model,
        "gpu_profile": gpu.profile,
        "gpus": [unit.as_dict() for unit in units],
    }


def agent_boot(*, agent_id: str, queued_at: float | None = None) -> None:
    """Start the agent's sandbox and wait for its runtime. Safe to run again for the same agent,
    also after a worker died mid-boot: a sandbox still running is kept, and the agent fails only
    when its sandbox is not running or its runtime does not answer /health in time."""
    with _boot_lock(agent_id) as mine:
        if mine:  # else another process of this host is booting it
            _boot(agent_id, queued_at)


@contextlib.contextmanager
def _boot_lock(agent_id: str) -> Iterator[bool]:
    """This host's lock on booting the agent (True when taken), so that a boot run again
    never races one still going; the kernel releases it when its holder dies."""
    folder = Path(settings.VAR_DIR) / "boot-locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{agent_id}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _boot(agent_id: str, queued_at: float | None) -> None:
    claimed = Agent.objects.filter(pk=agent_id, status__in=[_STATUS.PENDING, _STATUS.STARTING])
    if not claimed.update(status=_STATUS.STARTING):
        return  # running, stopped or deleted meanwhile: nothing to do
    agent = Agent.objects.get(pk=agent_id)
    drv = sandbox.driver()
    try:
        # start() keeps a sandbox that is already running (a boot interrupted after it).
        handle = drv.start(drv.create(sandbox.runtime_spec(agent=agent)))
        healthy = sandbox.wait_healthy(
            endpoint=handle.endpoint,
            sandbox_id=agent.sandbox_id,
            timeout=settings.SANDBOX_BOOT_TIMEOUT_SECONDS,
        )
        reason = "" if healthy else "the agent runtime did not become healthy in time"
    except VmDriverError as exc:
        handle, reason = None, f"the sandbox did not start: {exc}"
    if reason:
        _mark_failed(agent, reason)
        SPAWN_TOTAL.labels("failure").inc()
        log.warning("agent %s failed to boot: %s", agent.pk, reason)
        return
    booted = Agent.objects.filter(pk=agent_id, status=_STATUS.STARTING).update(
        status=_STATUS.RUNNING,
        endpoint=sandbox.agent_endpoint(agent=agent, local=handle.endpoint),
        accel=handle.accel,
        started_at=timezone.now(),
        last_active_at=timezone.now(),
        last_error="",
    )
    if not booted:  # deleted while booting
        drv.destroy(agent.sandbox_id)
        return
    SPAWN_TOTAL.labels("success").inc()
    if queued_at is not None:
        SPAWN_DURATION.observe(max(0.0, time.time() - queued_at))


def _audit(agent: Agent, actor: User | None, verb: str, changes: dict[str, object]) -> None:
    """Record an operator's action on an agent in the audit log: acting on another user's agent
    takes the operator check; an owner acting on their own agent is not an operator action."""
    if actor is None or actor.pk == agent.owner_id:
        return
    audit_record(
        actor=actor,
        action=f"agent.{verb}",
        target=agent,
        changes={field: (getattr(agent, field), new) for field, new in changes.items()},
    )


def _request(
    agent: Agent, *, deleted: bool, then_boot: bool = False, actor: User | None = None
) -> Agent:
    """Mark the agent stopping (and deleted) and queue the sandbox work on its host."""
    changes = {"status": _STATUS.STOPPING, "endpoint": ""}
    if deleted:
        changes["deleted_at"] = timezone.now()
    verb = "delete" if deleted else "restart" if then_boot else "stop"
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(**changes)
        _audit(agent, actor, verb, {k: v for k, v in changes.items() if k != "endpoint"})
        if deleted:
            task, args = _TEARDOWN, (str(agent.pk),)
        else:
            task, args = _HALT, (str(agent.pk), then_boot)
        before = {field: getattr(agent, field) for field in ("status", "endpoint", "deleted_at")}
        _queue_after_commit(
            task,
            args,
            queue=_queue(agent),
            undo=lambda: Agent.objects.filter(pk=agent.pk, status=_STATUS.STOPPING).update(
                **before
            ),
        )
    agent.refresh_from_db()
    return agent


def agent_destroy(*, agent: Agent, actor: User | None = None) -> Agent:
    """Delete the agent: its sandbox is torn down after commit; its row and usage stay. An
    operator's (``actor``, staff) deletion is in the audit log."""
    return _request(agent, deleted=True, actor=actor)


def agent_stop(*, agent: Agent, actor: User | None = None) -> Agent:
    """Stop a pending, starting, running or paused agent; its workspace is kept for a later
    start. An operator's (``actor``, staff) stop is in the audit log."""
    if agent.status not in Agent.HOLDING_STATUSES:
        raise AgentNotRunning(
            f"the agent is {agent.status}",
            details={"agent_id": str(agent.pk), "status": agent.status},
        )
    return _request(agent, deleted=False, actor=actor)


def agents_stop_all(*, actor: User | None = None) -> list[Agent]:
    """Stop every pending, starting, running or paused agent, as ``agent_stop`` does each one;
    the agents it stopped. One that stopped meanwhile is skipped."""
    stopped = []
    active = Agent.objects.filter(status__in=Agent.HOLDING_STATUSES, deleted_at__isnull=True)
    for agent in active.select_related("host").order_by("created_at"):
        try:
            stopped.append(agent_stop(agent=agent, actor=actor))
        except AgentNotRunning:
            continue
    return stopped


def agent_start(*, agent: Agent, actor: User | None = None) -> Agent:
    """Boot a stopped or failed agent again, on its host, or on another with room when its
    host went offline (its sessions continue there: the console holds their history). An
    operator's (``actor``, staff) start is in the audit log."""
    with transaction.atomic():
        started = Agent.objects.filter(
            pk=agent.pk, status__in=[_STATUS.STOPPED, _STATUS.FAILED], deleted_at__isnull=True
        ).update(status=_STATUS.PENDING, last_error="", draining_since=None)
        if not started:
            raise AgentNotRunning(
                f"the agent is {agent.status}; only a stopped or failed agent can be started",
                details={"agent_id": str(agent.pk), "status": agent.status},
            )
        if (
            agent.host_id
            and not SandboxHost.objects.filter(pk=agent.host_id, is_online=True).exists()
        ):
            _replace(agent)
        elif agent.gpu_count:  # what it held went back to its host when it stopped
            units = gpus_reclaim(agent=agent)
            Agent.objects.filter(pk=agent.pk).update(gpus=[unit.as_dict() for unit in units])
        _audit(agent, actor, "start", {"status": _STATUS.PENDING})
        _queue_after_commit(
            _BOOT,
            (str(agent.pk), time.time()),
            queue=_queue(agent),
            undo=lambda: Agent.objects.filter(pk=agent.pk, status=_STATUS.PENDING).update(
                status=agent.status, last_error=agent.last_error
            ),
        )
    agent.refresh_from_db()
    return agent


def _replace(agent: Agent) -> None:
    """Place ``agent`` on a live host with room, its own having gone offline."""
    gpu = (
        GpuRequest(agent.gpu_count, agent.gpu_model, agent.gpu_profile) if agent.gpu_count else None
    )
    placed = host_place(
        backend=agent.backend, vcpus=agent.vcpus, memory_mib=agent.memory_mib, gpu=gpu
    )
    gpus = [unit.as_dict() for unit in placed.gpus]
    Agent.objects.filter(pk=agent.pk).update(host=placed.host, gpus=gpus)
    agent.host, agent.gpus = placed.host, gpus


def agent_restart(*, agent: Agent, actor: User | None = None) -> Agent:
    """Stop the agent's runtime and boot it again (its workspace is kept). An operator's
    (``actor``, staff) restart is in the audit log."""
    if agent.status not in (*Agent.HOLDING_STATUSES, _STATUS.FAILED, _STATUS.STOPPED):
        raise AgentNotRunning(f"the agent is {agent.status}", details={"status": agent.status})
    return _request(agent, deleted=False, then_boot=True, actor=actor)


def agent_halt(*, agent_id: str, then_boot: bool = False) -> None:
    """Stop the sandbox of a stopping agent; mark it stopped, or boot it again for a restart."""
    agent = Agent.objects.filter(pk=agent_id, status=_STATUS.STOPPING).first()
    if agent is None:
        return
    sandbox.driver().stop(agent.sandbox_id)
    status = _STATUS.PENDING if then_boot else _STATUS.STOPPED
    Agent.objects.filter(pk=agent_id, status=_STATUS.STOPPING).update(
        status=status, stopped_at=timezone.now()
    )
    if then_boot:
        agent_boot(agent_id=agent_id, queued_at=time.time())


def agent_teardown(*, agent_id: str) -> None:
    """Destroy the sandbox of a deleted agent and mark it stopped."""
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        return
    sandbox.driver().destroy(agent.sandbox_id)
    Agent.objects.filter(pk=agent_id, status=_STATUS.STOPPING).update(
        status=_STATUS.STOPPED, stopped_at=timezone.now()
    )


def _host_agents(host_name: str | None):  # type: ignore[no-untyped-def]
    agents = Agent.objects.all()
    if host_name is None:
        return agents
    return agents.filter(Q(host__name=host_name) | Q(host__isnull=True))


def agents_reconcile(*, host_name: str | None = None, restarted: bool = False) -> dict[str, int]:
    """Bring the database and this host's sandboxes back into agreement.

    Running and paused agents whose sandbox died fail. Boots, stops, pauses and resumes left
    half-done (past twice the boot
    timeout, or at once when the host's worker has just ``restarted``: its predecessor's work
    died with it) are run again: a boot run again keeps a healthy sandbox and its agent runs.
    Sandboxes that no agent owns any more are destroyed, and those of stopped agents stopped.
    """
    drv = sandbox.driver()
    live = {status.id: status for status in drv.list()}
    agents = _host_agents(host_name)
    counts = {"failed": 0, "rebooted": 0, "stopped": 0, "torn_down": 0, "orphans": 0}
    stale = timezone.now() - timedelta(seconds=settings.SANDBOX_BOOT_TIMEOUT_SECONDS * 2)
    if restarted:
        stale = timezone.now()
    for agent in agents.filter(status__in=[_STATUS.RUNNING, _STATUS.PAUSED]):
        status = live.get(agent.sandbox_id)
        if status is None or status.state not in (VmState.RUNNING, VmState.PAUSED):
            _mark_failed(agent, "the sandbox is no longer running")
            counts["failed"] += 1
    for agent in agents.filter(
        status__in=[_STATUS.PAUSING, _STATUS.RESUMING], updated_at__lt=stale
    ).select_related("host"):
        if agent.status == _STATUS.PAUSING:
            worker_task(_FREEZE).apply_async((str(agent.pk), False), queue=_queue(agent))
        else:
            worker_task(_THAW).apply_async((str(agent.pk), None), queue=_queue(agent))
        counts["rebooted"] += 1
    interrupted = agents.filter(
        status__in=[_STATUS.PENDING, _STATUS.STARTING], updated_at__lt=stale
    ).select_related("host")
    for agent in interrupted:
        worker_task(_BOOT).apply_async((str(agent.pk), None), queue=_queue(agent))
        counts["rebooted"] += 1
    for agent in agents.filter(status=_STATUS.STOPPING, updated_at__lt=stale):
        if agent.deleted_at is None:
            agent_halt(agent_id=str(agent.pk))
            counts["stopped"] += 1
        else:
            agent_teardown(agent_id=str(agent.pk))
            counts["torn_down"] += 1
    owned = dict(
        Agent.objects.filter(deleted_at__isnull=True, sandbox_id__in=list(live)).values_list(
            "sandbox_id", "status"
        )
    )
    for sandbox_id, status in live.items():
        if sandbox_id not in owned:
            drv.destroy(sandbox_id)
            counts["orphans"] += 1
        elif owned[sandbox_id] in (_STATUS.STOPPED, _STATUS.FAILED) and (
            status.state in (VmState.RUNNING, VmState.PAUSED)
        ):
            drv.stop(sandbox_id)
    return counts


def agent_log_tail(*, agent: Agent, lines: int) -> str:
    """The last ``lines`` lines of the agent runtime's log, read here when it ran on this host,
    else through its host's relay; "" when it has none."""
    if not agent.sandbox_id:
        return ""
    host = agent.host
    if host is not None and host.relay_url and host.name != settings.SANDBOX_HOST_NAME:
        return sandbox.relay_log_tail(endpoint=f"{host.relay_url}/{agent.pk}", lines=lines)
    try:
        return sandbox.driver().logs(agent.sandbox_id, lines=lines)
    except SandboxNotFound:
        return ""


def _mark_failed(agent: Agent, reason: str) -> None:
    tail = agent_log_tail(agent=agent, lines=20)
    sandbox.driver().stop(agent.sandbox_id)
    Agent.objects.filter(pk=agent.pk, status=agent.status).update(
        status=_STATUS.FAILED,
        endpoint="",
        stopped_at=timezone.now(),
        last_error=reason + (f"\n--- last runtime log lines ---\n{tail}" if tail else ""),
    )


def agents_idle(*, idle_for: timedelta, owner: User | None = None) -> QuerySet[Agent]:
    """The running agents (of ``owner``, or everyone's) that have had no chat turn for
    ``idle_for``. Warm agents wait for a spawn by design and are left out."""
    cutoff = timezone.now() - idle_for
    idle = (
        Agent.objects.select_related("host")
        .filter(status=_STATUS.RUNNING, deleted_at__isnull=True, warm_pool__isnull=True)
        .filter(
            Q(last_active_at__lt=cutoff) | Q(last_active_at__isnull=True, started_at__lt=cutoff)
        )
    )
    return idle if owner is None else idle.filter(owner=owner)


def agents_stop_idle(
    *, idle_for: timedelta, owner: User | None = None, actor: User | None = None
) -> list[Agent]:
    """Stop the running agents (of ``owner``, or everyone's) that have had no chat turn for
    ``idle_for``, as ``agent_stop`` does each one; the agents it stopped. Warm agents wait for
    a spawn by design and are left alone."""
    idle = agents_idle(idle_for=idle_for, owner=owner)
    return [agent_stop(agent=agent, actor=actor) for agent in idle]


def warm_pool_refill(*, pool_id: int) -> int:
    """Spawn agents until the pool has its size ready or booting; return how many were added."""
    with transaction.atomic():
        pool = WarmPool.objects.select_for_update().filter(pk=pool_id, is_enabled=True).first()
        if pool is None:
            return 0
        ready = Agent.objects.filter(warm_pool=pool, status__in=Agent.ACTIVE_STATUSES).count()
        owner, added = pool_owner(), 0
        for _ in range(max(0, pool.size - ready)):
            try:
                agent_record(template=AgentTemplate.of(pool), owner=owner, warm_pool=pool)
            except CapacityExhausted:
                break  # the hosts are full; the next refill tries again
            added += 1
    return added


def warm_pools_refill() -> int:
    return sum(
        warm_pool_refill(pool_id=pk)
        for pk in WarmPool.objects.filter(is_enabled=True).values_list("pk", flat=True)
    )
