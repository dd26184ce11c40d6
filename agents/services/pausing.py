"""Pausing and resuming agents, and the idle reaper that stops or pauses idle agents.

A paused agent's sandbox is frozen (no CPU, its memory kept, so its runtime's sessions too) and
resumed where it was, by a request or by a chat turn.

As for a stop, a request records the change in one transaction and queues the sandbox work on
the agent's host after commit; the tasks there take a lock per agent, so a pause and a resume
never overlap, and each is safe to run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents import sandbox
from agents.metrics import RESUME_DURATION
from agents.models import Agent, OnIdle
from agents.services.lifecycle import (
    _audit,
    _mark_failed,
    _queue,
    _queue_after_commit,
    agent_stop,
    agents_idle,
)
from console.models import User
from plumbing.errors import AgentNotRunning, Conflict
from vmdriver import PauseMethod, SandboxNotFound, SandboxNotRunning, VmDriverError

__all__ = [
    "agent_freeze",
    "agent_pause",
    "agent_resume",
    "agent_thaw",
    "agents_reap_idle",
    "agents_snapshot_paused",
]

log = logging.getLogger(__name__)
_STATUS = Agent.Status
_FREEZE = "agents.tasks.agent_freeze"
_THAW = "agents.tasks.agent_thaw"


def agent_pause(*, agent: Agent, actor: User | None = None) -> Agent:
    """Pause a running agent: its sandbox is frozen after commit, on its host. Pausing a
    pausing or paused agent changes nothing. An operator's (``actor``, staff) pause is in the
    audit log."""
    if agent.status in (_STATUS.PAUSING, _STATUS.PAUSED):
        return agent
    if agent.warm_pool_id is not None:
        raise Conflict(
            "a warm agent waits, booted, for a spawn to claim it: it is not paused",
            details={"agent_id": str(agent.pk), "warm_pool": agent.warm_pool_id},
        )
    with transaction.atomic():
        paused = Agent.objects.filter(
            pk=agent.pk, status=_STATUS.RUNNING, deleted_at__isnull=True
        ).update(status=_STATUS.PAUSING)
        if not paused:
            raise AgentNotRunning(
                f"the agent is {agent.status}; only a running agent can be paused",
                details={"agent_id": str(agent.pk), "status": agent.status},
            )
        _audit(agent, actor, "pause", {"status": _STATUS.PAUSING})
        _queue_after_commit(
            _FREEZE,
            (str(agent.pk), False),
            queue=_queue(agent),
            undo=lambda: Agent.objects.filter(pk=agent.pk, status=_STATUS.PAUSING).update(
                status=_STATUS.RUNNING
            ),
        )
    agent.refresh_from_db()
    return agent


def agent_resume(*, agent: Agent, actor: User | None = None) -> Agent:
    """Resume a paused (or pausing) agent: its sandbox continues where it was, after commit,
    on its host, and the agent runs once its runtime answers. Resuming a running or resuming
    agent changes nothing. An operator's (``actor``, staff) resume is in the audit log."""
    if agent.status in (_STATUS.RUNNING, _STATUS.RESUMING):
        return agent
    before = agent.status
    with transaction.atomic():
        resumed = Agent.objects.filter(
            pk=agent.pk, status__in=[_STATUS.PAUSING, _STATUS.PAUSED], deleted_at__isnull=True
        ).update(status=_STATUS.RESUMING)
        if not resumed:
            raise AgentNotRunning(
                f"the agent is {agent.status}; only a paused agent can be resumed",
                details={"agent_id": str(agent.pk), "status": agent.status},
            )
        _audit(agent, actor, "resume", {"status": _STATUS.RESUMING})
        _queue_after_commit(
            _THAW,
            (str(agent.pk), time.time()),
            queue=_queue(agent),
            undo=lambda: Agent.objects.filter(pk=agent.pk, status=_STATUS.RESUMING).update(
                status=before
            ),
        )
    agent.refresh_from_db()
    return agent


@contextlib.contextmanager
def _pause_lock(agent_id: str) -> Iterator[None]:
    """This host's lock on pausing and resuming the agent: a resume waits for a pause still
    going, and the reverse. The kernel releases it when its holder dies."""
    folder = Path(settings.VAR_DIR) / "pause-locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{agent_id}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def agent_freeze(*, agent_id: str, to_disk: bool = False) -> None:
    """Pause the sandbox of a pausing agent and mark it paused, with how; ``to_disk`` saves a
    paused microVM's state to disk and frees its memory. An agent resumed, stopped or deleted
    meanwhile is left alone; a sandbox that cannot be paused leaves its agent running, and
    one that is gone fails it."""
    with _pause_lock(agent_id):
        wanted = _STATUS.PAUSED if to_disk else _STATUS.PAUSING
        agent = Agent.objects.filter(pk=agent_id, status=wanted).select_related("host").first()
        if agent is None or (to_disk and agent.pause_method == PauseMethod.SNAPSHOT):
            return
        try:
            method = sandbox.driver().pause(agent.sandbox_id, to_disk=to_disk)
        except (SandboxNotFound, SandboxNotRunning):
            _mark_failed(agent, "the sandbox is no longer running")
            return
        except VmDriverError as exc:
            log.warning("agent %s could not be paused: %s", agent_id, exc)
            if not to_disk:
                Agent.objects.filter(pk=agent_id, status=_STATUS.PAUSING).update(
                    status=_STATUS.RUNNING, last_error=f"the agent could not be paused: {exc}"
                )
            return
        changes: dict[str, object] = {"status": _STATUS.PAUSED, "pause_method": method.value}
        if not to_disk:
            changes["paused_at"] = timezone.now()
        Agent.objects.filter(pk=agent_id, status=wanted).update(**changes)


def agent_thaw(*, agent_id: str, queued_at: float | None = None) -> None:
    """Resume the sandbox of a resuming agent and mark it running once its runtime answers
    /health (it fails when it does not)."""
    with _pause_lock(agent_id):
        agent = Agent.objects.filter(pk=agent_id, status=_STATUS.RESUMING).first()
        if agent is None:
            return
        drv = sandbox.driver()
        try:
            handle = drv.resume(agent.sandbox_id)
            healthy = sandbox.wait_healthy(
                endpoint=handle.endpoint,
                sandbox_id=agent.sandbox_id,
                timeout=settings.SANDBOX_BOOT_TIMEOUT_SECONDS,
            )
            reason = "" if healthy else "the agent runtime did not answer in time once resumed"
        except VmDriverError as exc:
            reason = f"the sandbox could not be resumed: {exc}"
        if reason:
            _mark_failed(agent, reason)
            return
        Agent.objects.filter(pk=agent_id, status=_STATUS.RESUMING).update(
            status=_STATUS.RUNNING,
            endpoint=sandbox.agent_endpoint(agent=agent, local=handle.endpoint),
            paused_at=None,
            pause_method="",
            last_active_at=timezone.now(),
            last_error="",
        )
        if queued_at is not None:
            RESUME_DURATION.observe(max(0.0, time.time() - queued_at))


def agents_snapshot_paused() -> int:
    """Save to disk the microVMs paused in memory for ``AGENT_PAUSE_SNAPSHOT_SECONDS``,
    freeing their memory (queued on their hosts); how many were queued."""
    seconds = settings.AGENT_PAUSE_SNAPSHOT_SECONDS
    if not seconds:
        return 0
    long_paused = Agent.objects.select_related("host").filter(
        status=_STATUS.PAUSED,
        pause_method=PauseMethod.VM_STOP,
        paused_at__lt=timezone.now() - timedelta(seconds=seconds),
        deleted_at__isnull=True,
    )
    queued = 0
    for agent in long_paused:
        _queue_after_commit(_FREEZE, (str(agent.pk), True), queue=_queue(agent), undo=_nothing)
        queued += 1
    return queued


def _nothing() -> None:
    """Nothing to undo: the next pass queues it again."""


def agents_reap_idle() -> int:
    """Stop, or pause (as each agent's ``on_idle`` says), the running agents that have had no
    chat turn for the idle timeout; then save long-paused microVMs to disk. How many agents it
    stopped or paused."""
    agents_snapshot_paused()
    timeout = settings.AGENT_IDLE_TIMEOUT_SECONDS
    if not timeout:
        return 0
    done = 0
    for agent in agents_idle(idle_for=timedelta(seconds=timeout)):
        try:
            if agent.on_idle == OnIdle.PAUSE:
                agent_pause(agent=agent)
            else:
                agent_stop(agent=agent)
        except AgentNotRunning:
            continue  # it changed meanwhile
        done += 1
    return done
