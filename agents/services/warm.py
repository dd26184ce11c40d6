"""Warm pools: agents booted ahead of demand, so that a matching spawn claims one at once."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from agents.metrics import SPAWN_DURATION, SPAWN_TOTAL
from agents.models import Agent, WarmPool
from agents.services.queued import worker_task
from console.models import User

__all__ = ["POOL_OWNER", "AgentTemplate", "pool_owner", "warm_claim"]

POOL_OWNER = "warm-pool"  # the account that holds warm agents until they are claimed


@dataclass(frozen=True, slots=True)
class AgentTemplate:
    """What makes two agents interchangeable before anyone has talked to them."""

    model: str
    system_prompt: str = ""
    vcpus: int = 1
    memory_mib: int = 512
    max_concurrent_sessions: int = 100

    def fields(self) -> dict[str, object]:
        """The template as model fields, shared by agents and warm pools."""
        return {
            "model": self.model,
            "system_prompt": self.system_prompt,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "max_concurrent_sessions": self.max_concurrent_sessions,
        }

    @classmethod
    def of(cls, pool: WarmPool) -> AgentTemplate:
        return cls(
            pool.model,
            pool.system_prompt,
            pool.vcpus,
            pool.memory_mib,
            pool.max_concurrent_sessions,
        )


def pool_owner() -> User:
    owner, _ = User.objects.get_or_create(username=POOL_OWNER, defaults={"is_active": False})
    return owner


def warm_claim(
    *, template: AgentTemplate, owner: User, name: str = "", anthropic_key: str = ""
) -> Agent | None:
    """Hand a running warm agent of this template to ``owner``, idling as its pool says (stop
    or pause); call inside the spawn's transaction. The pool is refilled after commit."""
    pools = WarmPool.objects.filter(is_enabled=True, **template.fields())
    agent = (
        Agent.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("warm_pool")
        .filter(warm_pool__in=pools, status=Agent.Status.RUNNING, deleted_at__isnull=True)
        .order_by("started_at")
        .first()
    )
    if agent is None:
        return None
    pool_id = agent.warm_pool_id
    Agent.objects.filter(pk=agent.pk).update(
        owner=owner,
        name=name,
        warm_pool=None,
        anthropic_key_encrypted=anthropic_key,
        last_active_at=timezone.now(),
        on_idle=agent.warm_pool.on_idle,  # the pool's choice, unless the spawn makes its own
    )
    transaction.on_commit(lambda: worker_task("agents.tasks.warm_pool_refill").delay(pool_id))
    SPAWN_TOTAL.labels("success").inc()
    SPAWN_DURATION.observe(0.0)  # ready at once: the pool booted it ahead
    agent.refresh_from_db()
    return agent
