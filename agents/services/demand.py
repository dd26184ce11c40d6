"""Demand waiting for an agent: a one-shot task that names no agent, when none of its user's
runs, is recorded as an ``AgentDemand`` and waits (within ``AGENT_BOOT_WAIT_SECONDS``) for the
autoscaler to wake the user's pool, which counts the demand in the pool's load."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import Agent, AgentDemand
from agents.services.queued import PUBLISH_RETRY, worker_task
from agents.services.sessions import task_agent, task_agent_running
from console.models import User
from plumbing.database import database_sync_to_async
from plumbing.errors import AgentNotRunning, PoolWaking, outages_refused

__all__ = ["demand_record", "task_agent_waking"]

_WAKE = "scaling.tasks.wake"

# A demand whose caller vanished (a killed process) stops counting this long after its wait.
_EXPIRY_SLACK_SECONDS = 5.0

# How often a waiting caller looks for its agent: a boot takes seconds.
_POLL_SECONDS = 0.2


def demand_record(*, user: User) -> AgentDemand:
    """Record that ``user`` waits for an agent, and queue a wake of their pool once committed.
    When the broker cannot take the wake, the demand is dropped and the broker named (503)."""
    now = timezone.now()
    wait = settings.AGENT_BOOT_WAIT_SECONDS + _EXPIRY_SLACK_SECONDS
    AgentDemand.objects.filter(expires_at__lt=now).delete()  # of callers that vanished
    demand = AgentDemand.objects.create(owner=user, expires_at=now + timedelta(seconds=wait))

    def wake() -> None:
        try:
            with outages_refused():
                # By name, as agents' own tasks: agents may not import scaling, and a queued
                # task (not a signal's receiver) keeps the wake where beat's evaluations run.
                worker_task(_WAKE).apply_async((user.pk,), retry_policy=PUBLISH_RETRY)
        except Exception:
            AgentDemand.objects.filter(pk=demand.pk).delete()
            raise

    transaction.on_commit(wake)
    return demand


def _demand_answer(demand_id: int) -> tuple[bool, str]:
    """Whether the autoscaler answered the demand, and the pool it woke ("" when none)."""
    row = AgentDemand.objects.filter(pk=demand_id).values_list("answered_at", "pool").first()
    answered_at, pool = row or (None, "")
    return answered_at is not None, pool


async def task_agent_waking(*, user: User, agent_id: uuid.UUID | None) -> Agent:
    """The agent a one-shot task runs on (``task_agent``). Naming none when none of the user's
    runs, the task waits for the autoscaler to wake the user's pool: the agent once it runs;
    409 at once when no rule of the user's wakes one; 503 ``pool_waking`` when none ran within
    ``AGENT_BOOT_WAIT_SECONDS``."""
    try:
        return await database_sync_to_async(task_agent)(user=user, agent_id=agent_id)
    except AgentNotRunning:
        if agent_id is not None:
            raise
    wait = settings.AGENT_BOOT_WAIT_SECONDS
    deadline = time.monotonic() + wait
    demand = await database_sync_to_async(demand_record)(user=user)
    try:
        while True:
            agent = await database_sync_to_async(task_agent_running)(user=user)
            if agent is not None:
                return agent
            answered, pool = await database_sync_to_async(_demand_answer)(demand.pk)
            if answered and not pool:
                raise AgentNotRunning(
                    "you have no running agent, and no scaling rule of yours wakes one: "
                    "spawn one first"
                )
            if time.monotonic() >= deadline:
                raise PoolWaking(
                    f"no agent of yours came up within {wait:g} s: "
                    + (
                        f"the pool {pool!r} is waking"
                        if pool
                        else "the autoscaler has not answered"
                    )
                    + ", try again shortly",
                    details={"pool": pool, "waited_seconds": wait},
                )
            await asyncio.sleep(_POLL_SECONDS)
    finally:
        await AgentDemand.objects.filter(pk=demand.pk).adelete()
