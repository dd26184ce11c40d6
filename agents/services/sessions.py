"""Sessions as the REST API opens, closes and picks them, and the agent a one-shot task runs on
(``agents.services.live.task_execute`` runs it).

Everyone acts on their own sessions only: operators may read anyone's (``agents.selectors``),
but a turn, a close or a cancel is always its user's.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.db.models import Count, F, Q
from django.utils import timezone

from agents.models import Agent, Session
from agents.services.chat import draining_check
from console.models import User
from plumbing.errors import AgentNotRunning, Conflict, NotFound

__all__ = [
    "session_close",
    "session_create",
    "session_for_turn",
    "task_agent",
    "task_agent_running",
    "task_prompt",
]


def _own_agent(user: User, agent_id: uuid.UUID) -> Agent:
    agent = Agent.objects.filter(pk=agent_id, owner=user, deleted_at__isnull=True).first()
    if agent is None:
        raise NotFound(f"you have no agent {agent_id}", details={"agent_id": str(agent_id)})
    return agent


def session_create(*, user: User, agent_id: uuid.UUID, title: str) -> Session:
    agent = _own_agent(user, agent_id)
    draining_check(agent=agent)
    session = Session.objects.create(agent=agent, user=user, title=title)
    session.message_count = 0  # as the lists annotate it
    return session


def session_close(*, user: User, session: Session) -> Session:
    """Close the user's session; closing a closed one changes nothing."""
    if session.user_id != user.pk:
        raise NotFound(f"you have no session {session.pk}")  # operators read, never act
    if session.closed_at is None:
        session.closed_at = timezone.now()
        Session.objects.filter(pk=session.pk, closed_at__isnull=True).update(
            closed_at=session.closed_at
        )
    return session


def session_for_turn(*, user: User, session_id: uuid.UUID | str) -> Session:
    """The user's open session with a live agent, for a turn or a cancel; its agent and its
    user's quota come with it, read afresh."""
    session = (
        Session.objects.filter(pk=session_id, user=user)
        .select_related("agent", "user__quota")
        .first()
    )
    if session is None or session.agent.deleted_at is not None:
        raise NotFound(f"you have no session {session_id}")
    if session.closed_at is not None:
        raise Conflict("this session is closed", details={"session_id": str(session_id)})
    return session


def task_agent(*, user: User, agent_id: uuid.UUID | None) -> Agent:
    """The named agent of the user's, or their running agent with the fewest open sessions
    (never one that is draining), or else their paused one last active (the turn resumes it)."""
    if agent_id is not None:
        agent = _own_agent(user, agent_id)
        draining_check(agent=agent)
        return agent
    agent = task_agent_running(user=user) or _task_agent_paused(user)
    if agent is None:
        raise AgentNotRunning("you have no running agent: spawn one first")
    return agent


def task_agent_running(*, user: User) -> Agent | None:
    """The user's running agent with the fewest open sessions, not draining; None when none."""
    return (
        Agent.objects.filter(
            owner=user,
            deleted_at__isnull=True,
            status=Agent.Status.RUNNING,
            draining_since__isnull=True,
        )
        .annotate(open_sessions=Count("sessions", filter=Q(sessions__closed_at__isnull=True)))
        .order_by("open_sessions", "-last_active_at")
        .first()
    )


def _task_agent_paused(user: User) -> Agent | None:
    return (
        Agent.objects.filter(
            owner=user,
            deleted_at__isnull=True,
            status__in=Agent.PAUSED_STATUSES,
            draining_since__isnull=True,
        )
        .order_by(F("last_active_at").desc(nulls_last=True))
        .first()
    )


def task_prompt(task: str, context: Any) -> str:
    """A one-shot task's prompt: the task, then its context (any JSON) when there is one."""
    if context in (None, "", {}, []):
        return task
    if not isinstance(context, str):
        context = json.dumps(context, indent=2, ensure_ascii=False)
    return f"{task}\n\nContext:\n{context}"
