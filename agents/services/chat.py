"""One chat turn: from the console to the agent's runtime and back, recorded as it completes.
Every route runs it as a live turn (``agents.services.live``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from agents import sandbox
from agents.models import Agent, Message, Session
from agents.services.conversations import conversation_store, turn_messages
from agents.services.pausing import agent_resume
from console.models import UsageRecord, User
from console.services import user_check_active
from plumbing.database import database_sync_to_async
from plumbing.errors import (
    AgentDraining,
    AgentNotFound,
    AgentNotRunning,
    AgentUnavailable,
    Conflict,
    ConsoleError,
    NotFound,
)
from wire import turns
from wire.jsonbound import loads
from wire.sse import sse_events_of_chunks

__all__ = [
    "ChatResult",
    "ChatTurn",
    "TurnCancelled",
    "agent_chat_events_stoppable",
    "agent_for_user",
    "agent_turn_session",
    "draining_check",
    "refusal_status",
]

_STATUS = Agent.Status


def agent_for_user(*, user: User, agent_id: object, operator: bool = False) -> Agent:
    """The agent if ``user`` may see it (its owner, or an ``operator`` as ``is_operator``
    decided); otherwise it does not exist."""
    agents = Agent.objects.filter(deleted_at__isnull=True)
    if not operator:
        agents = agents.filter(owner=user)
    agent = agents.select_related("owner").filter(pk=agent_id).first()
    if agent is None:
        raise AgentNotFound(f"no agent {agent_id}")
    return agent


@dataclass(frozen=True, slots=True)
class ChatResult:
    session_id: str
    content: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    messages: tuple[Message, ...] = ()  # the turn's two recorded messages: prompt, reply

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


def draining_check(*, agent: Agent) -> None:
    """Refuse a new session on an agent the autoscaler is retiring."""
    if agent.draining_since is not None:
        raise AgentDraining(
            "the agent is draining: it takes no new sessions; use another agent",
            details={"agent_id": str(agent.pk)},
        )


def _turn_begin(
    *, user: User, agent_id: object, session_id: str | None, prompt: str
) -> tuple[Agent, Session | None]:
    """A turn's checks and its session, in one step and one query when all is well: the user
    may act (read afresh, since a chat socket's user object outlives a suspension), the agent
    is theirs and, once it runs, the session named (titled by the prompt when it has no title)
    or a new one. No session while the agent is not running: the caller waits for it."""
    session = None
    if session_id:
        session = (
            Session.objects.select_related("agent", "user__quota")
            .filter(pk=session_id, user=user, agent_id=agent_id, agent__deleted_at__isnull=True)
            .first()
        )
    if session is not None:
        agent, acting = session.agent, session.user
    else:
        agent = (
            Agent.objects.select_related("owner__quota")
            .filter(pk=agent_id, owner=user, deleted_at__isnull=True)
            .first()
        )
        acting = agent.owner if agent else User.objects.get(pk=user.pk)
    user_check_active(user=acting)
    if agent is None:
        raise AgentNotFound(f"no agent {agent_id}")
    if agent.status != _STATUS.RUNNING:
        return agent, None
    if session is None and session_id:
        raise NotFound(f"no session {session_id} with this agent")
    if session is None:
        draining_check(agent=agent)
        return agent, Session.objects.create(agent=agent, user=user, title=prompt.strip()[:80])
    if session.closed_at is not None:
        raise AgentNotRunning("this session is closed", details={"session_id": session_id})
    return agent, _titled(session, prompt)


def _titled(session: Session, prompt: str) -> Session:
    """The session, titled by the prompt if it has no title yet."""
    if not session.title:
        session.title = prompt.strip()[:80]
        Session.objects.filter(pk=session.pk, title="").update(title=session.title)
    return session


def _storable(text: str) -> str:
    # Model output may hold NUL characters, which PostgreSQL text cannot store.
    return text.replace("\x00", "\ufffd")


def _turn_finish(
    *,
    session: Session,
    prompt: str,
    content: str,
    since: datetime,
    keep_turns: int | None,
    tool_calls: list[dict[str, Any]],
    reported: Any = None,
) -> ChatResult:
    """Record both sides of a completed turn, with the tokens and cost the gateway ledgered and
    the tools it called, and its full messages (``reported`` by the runtime) in the
    conversation store; a turn that replaced later ones (``keep_turns``) deletes their
    messages with it."""
    totals = UsageRecord.objects.filter(session_id=session.pk, created_at__gte=since).aggregate(
        input=Sum("input_tokens"), output=Sum("output_tokens"), cost=Sum("cost_usd")
    )
    with transaction.atomic():
        if keep_turns is not None:
            messages = Message.objects.filter(session=session)
            kept = list(messages.values_list("pk", flat=True)[: 2 * keep_turns])
            messages.exclude(pk__in=kept).delete()
        position = Message.objects.filter(session=session, role=Message.Role.USER).count()
        conversation_store().record(
            session_id=str(session.pk),
            position=position,
            messages=turn_messages(reported=reported, prompt=prompt, content=content),
        )
        asked = Message.objects.create(
            session=session, role=Message.Role.USER, content=_storable(prompt)
        )
        answer = Message.objects.create(
            session=session,
            role=Message.Role.ASSISTANT,
            content=_storable(content),
            input_tokens=totals["input"] or 0,
            output_tokens=totals["output"] or 0,
            cost_usd=totals["cost"] or Decimal(0),
            tool_calls=tool_calls,
        )
        Session.objects.filter(pk=session.pk).update(updated_at=timezone.now())
        Agent.objects.filter(pk=session.agent_id).update(last_active_at=timezone.now())
    return ChatResult(
        session_id=str(session.pk),
        content=content,
        input_tokens=totals["input"] or 0,
        output_tokens=totals["output"] or 0,
        cost_usd=totals["cost"] or Decimal(0),
        messages=(asked, answer),
    )


# What a turn waits for (within AGENT_BOOT_WAIT_SECONDS): a boot, a pause, a resume.
_COMING = (_STATUS.PENDING, _STATUS.STARTING, _STATUS.PAUSING, _STATUS.RESUMING)


async def agent_turn_session(*, turn: ChatTurn) -> tuple[Agent, Session]:
    """The turn's running agent and its session (a new one when it names none); a turn sent
    right after spawning waits for the boot to finish, and one sent to a paused agent resumes
    it and waits for it, as a sandbox that pauses resumes on its next request."""
    read = turn.session
    if read is not None and read.agent.status == _STATUS.RUNNING:
        if read.title:
            return read.agent, read
        return read.agent, await database_sync_to_async(_titled)(read, turn.prompt)
    deadline = time.monotonic() + settings.AGENT_BOOT_WAIT_SECONDS
    while True:
        agent, session = await database_sync_to_async(_turn_begin)(
            user=turn.user, agent_id=turn.agent_id, session_id=turn.session_id, prompt=turn.prompt
        )
        if session is not None:
            return agent, session
        if agent.status == _STATUS.PAUSED:
            agent = await database_sync_to_async(agent_resume)(agent=agent)
            if agent.status == _STATUS.RUNNING:  # resumed at once
                continue
        if agent.status not in _COMING or time.monotonic() >= deadline:
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
    client: aiohttp.ClientSession
    response: aiohttp.ClientResponse
    keep_turns: int | None

    async def close(self) -> None:
        """Drop the connection, whatever is left unread: a turn stopped mid-reply cancels the
        runtime's call (and the gateway's, and Anthropic's) this way."""
        self.response.close()
        await self.client.close()

    async def finish(
        self, content: str, tool_calls: list[dict[str, Any]], reported: Any
    ) -> ChatResult:
        return await database_sync_to_async(_turn_finish)(
            session=self.session,
            prompt=self.prompt,
            content=content,
            since=self.since,
            keep_turns=self.keep_turns,
            tool_calls=tool_calls,
            reported=reported,
        )


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """What a user asks of an agent: one prompt, in a session (a new one when None). With
    ``keep_turns``, the prompt replaces every turn of the session after the first
    ``keep_turns`` (regenerating a reply, or editing a prompt and sending it again)."""

    user: User
    agent_id: object
    prompt: str
    session_id: str | None = None
    max_tokens: int = turns.MAX_TOKENS_DEFAULT
    keep_turns: int | None = None
    # The open session as the caller has just read it, with its agent, having checked that the
    # user may act (``live_turn_prepare``): the turn begins without reading them again.
    session: Session | None = None
    new_session: bool = False  # the session was opened for this turn
    # The turns the session holds (before ``keep_turns``): a runtime holding another number
    # (one started afresh) is sent the stored history with the turn.
    turns: int | None = None


async def _turn_open(*, turn: ChatTurn) -> _OpenTurn:
    """Send a turn to a running agent; refusals (from here or the runtime) raise before reading."""
    agent, session = await agent_turn_session(turn=turn)
    since = timezone.now()
    body = {
        "prompt": turn.prompt,
        "session_id": str(session.pk),
        "max_tokens": turn.max_tokens,
        "stream": True,
    }
    if turn.keep_turns is not None:
        body["keep_turns"] = turn.keep_turns
    if turn.turns is not None:
        body["turns"] = turn.turns
    client = sandbox.runtime_session(agent.endpoint, timeout=settings.AGENT_CHAT_TIMEOUT_SECONDS)
    try:
        try:
            response = await client.post("/v1/agent/chat", json=body)
            if response.status == 409 and await _history_required(response):
                response.close()
                body |= await database_sync_to_async(_stored_history)(session_id=str(session.pk))
                response = await client.post("/v1/agent/chat", json=body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await client.close()
            raise AgentUnavailable(f"the agent's runtime could not be reached: {exc}") from exc
        except BaseException:  # stopped while connecting
            await client.close()
            raise
        opened = _OpenTurn(session, turn.prompt, since, client, response, turn.keep_turns)
        if response.status != 200:
            try:
                raise _runtime_error(response.status, await response.read())
            finally:
                await opened.close()
    except ConsoleError:
        if turn.new_session:
            await database_sync_to_async(_first_turn_failed)(session)
        raise
    return opened


async def _history_required(response: aiohttp.ClientResponse) -> bool:
    """Whether the runtime refused the turn for want of the session's history."""
    try:
        error = loads(await response.content.read(64 * 1024))["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and error.get("code") == "history_required"


def _stored_history(*, session_id: str) -> dict[str, Any]:
    """The session's stored turns for a runtime started afresh: the newest that fit in a chat
    body, and how many older ones were left out."""
    stored = conversation_store().turns(session_id=session_id)
    room, kept = turns.HISTORY_MAX_BYTES - 64 * 1024, 0
    for turn in reversed(stored):
        room -= len(json.dumps(turn))
        if room < 0:
            break
        kept += 1
    left_out = len(stored) - kept
    history = [message for turn in stored[left_out:] for message in turn]
    return {"history": history, "history_left_out": left_out}


def _first_turn_failed(session: Session) -> None:
    """A session opened for a turn that was refused holds nothing: it is closed, not left open."""
    Session.objects.filter(pk=session.pk, closed_at__isnull=True).update(closed_at=timezone.now())


# What each event of a runtime's stream must hold (a sandbox is not trusted).
_EVENT_TEXT = {"delta": "text", "done": "content"}


def _check_event(event: str, data: Any) -> None:
    field = _EVENT_TEXT.get(event)
    malformed = not isinstance(data, dict) or (field and not isinstance(data.get(field), str))
    if not malformed and event == "error":
        malformed = not all(isinstance(data.get(k, ""), str) for k in ("code", "message"))
        malformed = malformed or not isinstance(data.get("details", {}), dict)
    if malformed:
        raise AgentUnavailable(
            "the agent's runtime sent a malformed event", details={"event": event[:40]}
        )


def _tool_call(data: dict[str, Any]) -> dict[str, Any]:
    """A ``tool`` event as it is recorded: what the runtime says of the call, bounded (the
    runtime already cuts its output short)."""
    return {
        "name": str(data.get("name"))[:200],
        "input": data.get("input"),
        "is_error": bool(data.get("is_error")),
        "output": _storable(str(data.get("output", "")))[:4000],
    }


async def _chat_events(*, turn: ChatTurn) -> AsyncIterator[tuple[str, Any]]:
    """The runtime's events for a turn: ``delta`` and ``tool`` (dicts), then ``done`` (the
    recorded ``ChatResult``) or ``error``. Refusals raise before the first event."""
    opened = await _turn_open(turn=turn)

    async def events() -> AsyncIterator[tuple[str, Any]]:
        tool_calls: list[dict[str, Any]] = []
        try:
            async for event, data in sse_events_of_chunks(opened.response.content.iter_any()):
                _check_event(event, data)
                if event == "tool":
                    tool_calls.append(_tool_call(data))
                elif event == "done":
                    data = await opened.finish(data["content"], tool_calls, data.get("messages"))
                elif event == "error" and turn.new_session:
                    await database_sync_to_async(_first_turn_failed)(opened.session)
                yield event, data
                if event in ("done", "error"):
                    return
            # Else its followers would wait for an end that never comes.
            raise AgentUnavailable("the agent's runtime ended its reply without a result")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AgentUnavailable(f"the agent's runtime stopped answering: {exc}") from exc
        except ValueError as exc:  # not UTF-8, not JSON, or too deep
            raise AgentUnavailable("the agent's runtime sent a malformed stream") from exc
        finally:
            await opened.close()

    return events()


class TurnCancelled(Conflict):
    code = "turn_cancelled"


_READ_ALL = object()  # the reader's last word


async def agent_chat_events_stoppable(
    *, turn: ChatTurn, stopped: asyncio.Event
) -> AsyncIterator[tuple[str, Any]]:
    """A turn in an existing session as ``(event, data)`` pairs: ``delta`` and ``tool``, then
    ``done`` (the recorded ``ChatResult``), ``error`` (the runtime's or the gateway's refusal)
    or ``cancelled``: setting ``stopped`` stops it at any point, while the agent boots too.
    Refusals before the reply starts raise ``ConsoleError``.

    A task of its own opens the turn and reads its events into a queue, and a stop cancels that
    task: it ends the opening or the reading (and with them the calls they made) but never
    interrupts what the caller does with an event, and an event costs a queue's put and get,
    not tasks of its own."""
    assert turn.session_id is not None
    session_id = turn.session_id
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def read() -> None:
        try:
            async with contextlib.aclosing(await _chat_events(turn=turn)) as events:
                async for item in events:
                    queue.put_nowait(item)
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(_READ_ALL)

    async def stop() -> None:
        await stopped.wait()
        if not reader.done():
            reader.cancel()
            queue.put_nowait(("cancelled", {"session_id": session_id}))

    reader = asyncio.create_task(read())
    stopper = asyncio.create_task(stop())
    try:
        while (item := await queue.get()) is not _READ_ALL:
            if isinstance(item, Exception):
                raise item
            yield item
            if item[0] == "cancelled":
                return
    finally:
        stopper.cancel()
        reader.cancel()
        await asyncio.wait([reader])  # closed; a cancellation of this generator still raises


def _runtime_error(status: int, body: bytes) -> ConsoleError:
    """The refusal a runtime's (or, through it, the gateway's) error answer stands for."""
    try:
        error = loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        error = None
    if not isinstance(error, dict):
        error = {"code": "agent_error", "message": body.decode(errors="replace")[:500]}
    message, code, details = error.get("message"), error.get("code"), error.get("details")
    exc = AgentUnavailable(
        message if isinstance(message, str) and message else "the agent failed",
        details=details if isinstance(details, dict) else None,
    )
    exc.code = code if isinstance(code, str) and code else exc.code
    exc.status = refusal_status(status)
    return exc


def refusal_status(status: object) -> int:
    """The status a runtime's error answers with: refusals the gateway made (quota, bad input)
    keep theirs; runtime faults are a 502."""
    if isinstance(status, int) and status in (400, 403, 409, 413, 429, 503):
        return status
    return 502
