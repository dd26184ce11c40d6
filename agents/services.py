"""Services for agents: spawn, boot, destroy, reconcile, and one chat turn."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from agents import sandbox
from agents.models import Agent, Message, Session
from agents.runtime.sse import sse_events, sse_frame
from console.crypto import encrypt
from console.errors import (
    AgentNotFound,
    AgentNotRunning,
    AgentUnavailable,
    ConsoleError,
    NotFound,
    QuotaExceeded,
)
from console.metrics import SPAWN_DURATION, SPAWN_TOTAL
from console.models import Quota, UsageRecord, User
from console.services import quota_get, user_check_active
from vmdriver import SandboxNotFound, VmDriverError, VmState

__all__ = [
    "ChatResult",
    "ChatTurn",
    "agent_boot",
    "agent_chat",
    "agent_chat_stream",
    "agent_destroy",
    "agent_for_user",
    "agent_spawn",
    "agent_teardown",
    "agents_reconcile",
]

log = logging.getLogger(__name__)
_STATUS = Agent.Status


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
) -> Agent:
    """Check the owner's quota and record a pending agent in one transaction; boot it after."""
    from agents.tasks import agent_boot_task

    user_check_active(user=owner)
    with transaction.atomic():
        # Locking the quota row serializes concurrent spawns of one user, so the count is exact.
        quota = Quota.objects.select_for_update().get(pk=quota_get(user=owner).pk)
        used = Agent.objects.filter(owner=owner, status__in=Agent.ACTIVE_STATUSES).aggregate(
            count=Count("id"), vcpus=Sum("vcpus"), memory=Sum("memory_mib")
        )
        _limit("max_agents", quota.max_agents, used["count"], 1)
        _limit("max_total_vcpus", quota.max_total_vcpus, used["vcpus"] or 0, vcpus)
        _limit("max_total_memory_mib", quota.max_total_memory_mib, used["memory"] or 0, memory_mib)
        agent = Agent.objects.create(
            owner=owner,
            name=name,
            model=model or settings.DEFAULT_AGENT_MODEL,
            system_prompt=system_prompt,
            vcpus=vcpus,
            memory_mib=memory_mib,
            max_concurrent_sessions=max_concurrent_sessions,
            backend=settings.SANDBOX_BACKEND,
            sandbox_id=str(uuid.uuid4()),
            anthropic_key_encrypted=encrypt(anthropic_api_key) if anthropic_api_key else "",
        )
        queued_at = time.time()
        transaction.on_commit(lambda: agent_boot_task.delay(str(agent.id), queued_at))
    return agent


def agent_boot(*, agent_id: str, queued_at: float | None = None) -> None:
    """Start the agent's sandbox and wait for its runtime. Safe to run again for the same agent."""
    claimed = Agent.objects.filter(pk=agent_id, status__in=[_STATUS.PENDING, _STATUS.STARTING])
    if not claimed.update(status=_STATUS.STARTING):
        return  # running, stopped or deleted meanwhile: nothing to do
    agent = Agent.objects.get(pk=agent_id)
    drv = sandbox.driver()
    try:
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
        status=_STATUS.RUNNING, endpoint=handle.endpoint, started_at=timezone.now(), last_error=""
    )
    if not booted:  # deleted while booting
        drv.destroy(agent.sandbox_id)
        return
    SPAWN_TOTAL.labels("success").inc()
    if queued_at is not None:
        SPAWN_DURATION.observe(max(0.0, time.time() - queued_at))


def agent_destroy(*, agent: Agent) -> Agent:
    """Mark the agent deleted and tear its sandbox down after commit."""
    from agents.tasks import agent_teardown_task

    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(
            status=_STATUS.STOPPING, deleted_at=timezone.now(), endpoint=""
        )
        transaction.on_commit(lambda: agent_teardown_task.delay(str(agent.pk)))
    agent.refresh_from_db()
    return agent


def agent_teardown(*, agent_id: str) -> None:
    """Destroy the sandbox of a stopping agent and mark it stopped."""
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        return
    sandbox.driver().destroy(agent.sandbox_id)
    Agent.objects.filter(pk=agent_id, status=_STATUS.STOPPING).update(
        status=_STATUS.STOPPED, stopped_at=timezone.now()
    )


def agents_reconcile() -> dict[str, int]:
    """Bring the database and the sandboxes back into agreement.

    Running agents whose sandbox died fail; agents stuck starting past the boot timeout fail;
    stopping agents are torn down; sandboxes no live agent owns are destroyed.
    """
    drv = sandbox.driver()
    live = {status.id: status for status in drv.list()}
    counts = {"failed": 0, "torn_down": 0, "orphans": 0}
    stale = timezone.now() - timedelta(seconds=settings.SANDBOX_BOOT_TIMEOUT_SECONDS * 2)
    for agent in Agent.objects.filter(
        Q(status=_STATUS.RUNNING) | Q(status=_STATUS.STARTING, updated_at__lt=stale)
    ):
        status = live.get(agent.sandbox_id)
        if status is None or status.state != VmState.RUNNING:
            _mark_failed(agent, "the sandbox is no longer running")
            counts["failed"] += 1
    for agent_id in Agent.objects.filter(status=_STATUS.STOPPING).values_list("pk", flat=True):
        agent_teardown(agent_id=str(agent_id))
        counts["torn_down"] += 1
    owned = set(
        Agent.objects.filter(status__in=Agent.ACTIVE_STATUSES).values_list("sandbox_id", flat=True)
    )
    for sandbox_id in set(live) - owned:
        drv.destroy(sandbox_id)
        counts["orphans"] += 1
    return counts


def _mark_failed(agent: Agent, reason: str) -> None:
    drv = sandbox.driver()
    try:
        tail = drv.logs(agent.sandbox_id, lines=20)
    except SandboxNotFound:
        tail = ""
    drv.stop(agent.sandbox_id)
    Agent.objects.filter(pk=agent.pk, status=agent.status).update(
        status=_STATUS.FAILED,
        endpoint="",
        stopped_at=timezone.now(),
        last_error=reason + (f"\n--- last runtime log lines ---\n{tail}" if tail else ""),
    )


def agent_for_user(*, user: User, agent_id: object) -> Agent:
    """The agent if ``user`` may see it (its owner, or an operator); otherwise it does not exist."""
    agents = Agent.objects.filter(deleted_at__isnull=True)
    if not user.is_staff:
        agents = agents.filter(owner=user)
    agent = agents.select_related("owner").filter(pk=agent_id).first()
    if agent is None:
        raise AgentNotFound(f"no agent {agent_id}")
    return agent


# --- Chat ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatResult:
    session_id: str
    content: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal

    def as_hypercore(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "content": self.content,
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "cost_usd": str(self.cost_usd),
            "status": "completed",
        }


def _chat_agent(*, user: User, agent_id: object) -> Agent:
    user_check_active(user=user)
    agent = Agent.objects.filter(pk=agent_id, owner=user, deleted_at__isnull=True).first()
    if agent is None:
        raise AgentNotFound(f"no agent {agent_id}")
    return agent


def _turn_begin(*, user: User, agent: Agent, session_id: str | None, prompt: str) -> Session:
    if session_id:
        session = Session.objects.filter(pk=session_id, agent=agent, user=user).first()
        if session is None:
            raise NotFound(f"no session {session_id} with this agent")
        if session.closed_at is not None:
            raise AgentNotRunning("this session is closed", details={"session_id": session_id})
    else:
        session = Session.objects.create(agent=agent, user=user, title=prompt.strip()[:80])
    return session


def _turn_finish(*, session: Session, prompt: str, content: str, since: datetime) -> ChatResult:
    """Record both sides of a completed turn, with the tokens and cost the gateway ledgered."""
    totals = UsageRecord.objects.filter(session_id=session.pk, created_at__gte=since).aggregate(
        input=Sum("input_tokens"), output=Sum("output_tokens"), cost=Sum("cost_usd")
    )
    with transaction.atomic():
        Message.objects.create(session=session, role=Message.Role.USER, content=prompt)
        Message.objects.create(
            session=session,
            role=Message.Role.ASSISTANT,
            content=content,
            input_tokens=totals["input"] or 0,
            output_tokens=totals["output"] or 0,
            cost_usd=totals["cost"] or Decimal(0),
        )
        Session.objects.filter(pk=session.pk).update(updated_at=timezone.now())
    return ChatResult(
        session_id=str(session.pk),
        content=content,
        input_tokens=totals["input"] or 0,
        output_tokens=totals["output"] or 0,
        cost_usd=totals["cost"] or Decimal(0),
    )


async def _wait_running(*, user: User, agent_id: object) -> Agent:
    """The agent once it runs; a turn sent right after spawning waits for the boot to finish."""
    deadline = time.monotonic() + settings.AGENT_BOOT_WAIT_SECONDS
    while True:
        agent = await sync_to_async(_chat_agent)(user=user, agent_id=agent_id)
        if agent.status == _STATUS.RUNNING:
            return agent
        booting = agent.status in (_STATUS.PENDING, _STATUS.STARTING)
        if not booting or time.monotonic() >= deadline:
            raise AgentNotRunning(
                f"the agent is {agent.status}, not running",
                details={"agent_id": str(agent.pk), "status": agent.status},
            )
        await asyncio.sleep(0.1)


@dataclass(frozen=True, slots=True)
class _OpenTurn:
    """A turn sent to the runtime whose answer (JSON or a stream) is still to be read."""

    session: Session
    prompt: str
    since: datetime
    client: httpx.AsyncClient
    response: httpx.Response

    async def close(self) -> None:
        await self.response.aclose()
        await self.client.aclose()

    async def finish(self, content: str) -> ChatResult:
        return await sync_to_async(_turn_finish)(
            session=self.session, prompt=self.prompt, content=content, since=self.since
        )


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """What a user asks of an agent: one prompt, in a session (a new one when None)."""

    user: User
    agent_id: object
    prompt: str
    session_id: str | None = None
    max_tokens: int = 4096


async def _turn_open(*, turn: ChatTurn, stream: bool) -> _OpenTurn:
    """Send a turn to a running agent; refusals (from here or the runtime) raise before reading."""
    agent = await _wait_running(user=turn.user, agent_id=turn.agent_id)
    session = await sync_to_async(_turn_begin)(
        user=turn.user, agent=agent, session_id=turn.session_id, prompt=turn.prompt
    )
    since = timezone.now()
    body = {
        "prompt": turn.prompt,
        "session_id": str(session.pk),
        "max_tokens": turn.max_tokens,
        "stream": stream,
    }
    client = sandbox.runtime_client(agent.endpoint, timeout=settings.AGENT_CHAT_TIMEOUT_SECONDS)
    request = client.build_request("POST", "/v1/agent/chat", json=body)
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        raise AgentUnavailable(f"the agent's runtime could not be reached: {exc}") from exc
    opened = _OpenTurn(session, turn.prompt, since, client, response)
    if response.status_code != 200:
        await response.aread()
        await opened.close()
        raise _runtime_error(response)
    return opened


async def agent_chat(*, turn: ChatTurn) -> ChatResult:
    """Run one turn on a running agent and record it."""
    opened = await _turn_open(turn=turn, stream=False)
    try:
        reply = json.loads(await opened.response.aread())
    finally:
        await opened.close()
    return await opened.finish(reply["content"])


async def agent_chat_stream(*, turn: ChatTurn) -> AsyncIterator[bytes]:
    """Like ``agent_chat``, but the reply streams as SSE: ``delta`` events, then ``done`` with
    the recorded result (or ``error``). Refusals raise before the first event."""
    opened = await _turn_open(turn=turn, stream=True)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for event, data in sse_events(opened.response.aiter_lines()):
                if event == "done":
                    data = (await opened.finish(data["content"])).as_hypercore()
                yield sse_frame(event, data)
        finally:
            await opened.close()

    return events()


def _runtime_error(response: httpx.Response) -> ConsoleError:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"code": "agent_error", "message": response.text[:500]}
    exc = AgentUnavailable(error.get("message") or "the agent failed", details=error.get("details"))
    exc.code = error.get("code") or exc.code
    # Refusals the gateway made (quota, bad input) keep their status; runtime faults are a 502.
    if response.status_code in (400, 403, 409, 413, 429, 503):
        exc.status = response.status_code
    return exc
