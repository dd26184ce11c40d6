"""Live chat turns: replies that belong to no socket, numbered, kept for a while, and
broadcast to every socket that follows the session, in any web process.

A turn runs as a task of the web process that received it, so a page may reload, lose its
connection or close while the reply goes on. Each of a session's events gets the next ``seq``,
is appended to the session's replay log and sent to the session's channel-layer group. The log
(``REDIS_URL``: a Redis list per session, shared by every process; otherwise in this process's
memory) keeps the last ``CHAT_REPLAY_EVENTS`` events for ``CHAT_REPLAY_TTL_SECONDS`` after the
last one, so a page that comes back gets what it missed from ``live_replay`` and then follows
the group. One turn at a time per session: ``live_turn_start`` claims the session atomically,
and a turn sent meanwhile waits for it (``CHAT_TURN_QUEUE_SECONDS`` at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import redis.asyncio as redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from agents.models import Agent, Message, Session
from agents.selectors import chat_budgets, message_data
from agents.services.chat import (
    ChatResult,
    ChatTurn,
    TurnCancelled,
    agent_chat_events_stoppable,
    agent_turn_session,
    refusal_status,
)
from agents.services.demand import task_agent_waking
from agents.services.sessions import session_for_turn, task_prompt
from console.models import User
from console.services import user_check_active
from plumbing.database import database_sync_to_async
from plumbing.errors import (
    OUTAGES,
    Conflict,
    ConsoleError,
    NotFound,
    outage_refusal,
    outages_refused,
)
from wire import events as ev
from wire import turns
from wire.logs import current_request_id, using_request_id

__all__ = [
    "FollowedTurn",
    "LiveTurn",
    "TurnQueueTimeout",
    "live_claimed",
    "live_end_abandoned",
    "live_error",
    "live_event",
    "live_follow",
    "live_next",
    "live_publish",
    "live_replay",
    "live_result",
    "live_stop",
    "live_turn_ask",
    "live_turn_prepare",
    "live_turn_result",
    "live_turn_send",
    "live_turn_start",
    "live_turn_stop",
    "task_execute",
]

log = logging.getLogger(__name__)
# A turn holds its session for this long, renewed while it runs: a web process that dies
# mid-turn frees the session within this time.
CLAIM_SECONDS = 30.0
_GROUP_MESSAGE = "chat.event"  # the consumer's ``chat_event`` handler
_STOP_MESSAGE = "turn.stop"
_running: set[asyncio.Task[None]] = set()  # turns in flight here, held against collection
# A turn waiting for its session tries to claim it this often: a claim is a Redis key (or this
# process's memory) that any process may release, so a short poll is the one exact wake-up.
_QUEUE_POLL_SECONDS = 0.05


class TurnQueueTimeout(Conflict):
    code = "turn_queue_timeout"


# --- The replay log ------------------------------------------------------------------------------


@dataclass
class _MemorySession:
    seq: int = 0
    events: deque[dict[str, Any]] = field(default_factory=deque)
    touched: float = field(default_factory=time.monotonic)
    claim: tuple[str, float] | None = None  # (turn id, until)
    stop: str | None = None  # the turn asked to stop
    queued: dict[str, float] = field(default_factory=dict)  # waiting turn id: until


class _MemoryLog:
    """The log in this process's memory, for a console without Redis (one web process)."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, _MemorySession] = OrderedDict()

    def _get(self, session_id: str) -> _MemorySession:
        now = time.monotonic()
        ttl = settings.CHAT_REPLAY_TTL_SECONDS
        while self._sessions:  # forget sessions quiet for longer than the TTL, oldest first
            oldest_id, oldest = next(iter(self._sessions.items()))
            if now - oldest.touched < ttl or oldest.claim:
                break
            del self._sessions[oldest_id]
        found = self._sessions.setdefault(session_id, _MemorySession())
        self._sessions.move_to_end(session_id)
        found.touched = now
        return found

    async def append(self, session_id: str, event: dict[str, Any], release: str | None) -> int:
        found = self._get(session_id)
        found.seq += 1
        found.events.append(event | {"seq": found.seq})
        while len(found.events) > settings.CHAT_REPLAY_EVENTS:
            found.events.popleft()
        if release and found.claim and found.claim[0] == release:
            found.claim = found.stop = None
        return found.seq

    async def read(self, session_id: str) -> tuple[int, list[dict[str, Any]]]:
        found = self._sessions.get(session_id)
        if found is None:
            return 0, []
        return found.seq, list(found.events)

    async def claim(self, session_id: str, turn_id: str, seconds: float) -> bool:
        found = self._get(session_id)
        if found.claim and found.claim[1] > time.monotonic():
            return False
        found.claim = (turn_id, time.monotonic() + seconds)
        return True

    async def renew(self, session_id: str, turn_id: str, seconds: float) -> None:
        found = self._sessions.get(session_id)
        if found and found.claim and found.claim[0] == turn_id:
            found.claim = (turn_id, time.monotonic() + seconds)

    async def claimed(self, session_id: str) -> str | None:
        found = self._sessions.get(session_id)
        if found and found.claim and found.claim[1] > time.monotonic():
            return found.claim[0]
        return None

    async def release(self, session_id: str, turn_id: str) -> None:
        found = self._sessions.get(session_id)
        if found and found.claim and found.claim[0] == turn_id:
            found.claim = found.stop = None

    async def ask_stop(self, session_id: str, turn_id: str) -> None:
        found = self._sessions.get(session_id)
        if found:
            found.stop = turn_id

    async def enqueue(self, session_id: str, turn_id: str, seconds: float) -> None:
        found = self._get(session_id)
        now = time.monotonic()
        found.queued = {t: u for t, u in found.queued.items() if u > now}
        found.queued[turn_id] = now + seconds

    async def is_queued(self, session_id: str, turn_id: str) -> bool:
        found = self._sessions.get(session_id)
        return bool(found and found.queued.get(turn_id, 0) > time.monotonic())

    async def stop_asked(self, session_id: str, turn_id: str) -> bool:
        found = self._sessions.get(session_id)
        return bool(found and found.stop == turn_id)


# Numbers the event and appends it, trimmed to the cap, in one step: "<seq> <json>". A turn's
# last event also releases its claim on the session, so no next turn's events can come first.
_APPEND = """
local seq = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], tostring(seq) .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
return seq
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class _RedisLog:
    """The log in Redis, shared by every web process."""

    def __init__(self, url: str) -> None:
        self._url = url
        # A client's connections belong to the event loop that opened them.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # redis-py's plain pool fails a command past 100 connections in use; every turn
            # in flight publishes through this one, so commands wait for a free connection.
            pool = redis.BlockingConnectionPool.from_url(self._url, max_connections=100)
            client = self._clients[loop] = redis.Redis(connection_pool=pool)
        return client

    async def append(self, session_id: str, event: dict[str, Any], release: str | None) -> int:
        return int(
            await self._redis().eval(
                _APPEND,
                3,
                f"chat:seq:{session_id}",
                f"chat:log:{session_id}",
                f"chat:turn:{session_id}",
                json.dumps(event, separators=(",", ":")),
                settings.CHAT_REPLAY_EVENTS,
                settings.CHAT_REPLAY_TTL_SECONDS,
                release or "",
            )
        )

    async def read(self, session_id: str) -> tuple[int, list[dict[str, Any]]]:
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.get(f"chat:seq:{session_id}")
            pipe.lrange(f"chat:log:{session_id}", 0, -1)
            seq, entries = await pipe.execute()
        found = []
        for entry in entries:
            number, _, body = entry.partition(b" ")
            found.append(json.loads(body) | {"seq": int(number)})
        return int(seq or 0), found

    async def claim(self, session_id: str, turn_id: str, seconds: float) -> bool:
        key = f"chat:turn:{session_id}"
        return bool(await self._redis().set(key, turn_id, nx=True, ex=max(1, int(seconds))))

    async def renew(self, session_id: str, turn_id: str, seconds: float) -> None:
        key = f"chat:turn:{session_id}"
        await self._redis().eval(_RENEW, 1, key, turn_id, max(1, int(seconds)))

    async def claimed(self, session_id: str) -> str | None:
        found = await self._redis().get(f"chat:turn:{session_id}")
        return found.decode() if found else None

    async def release(self, session_id: str, turn_id: str) -> None:
        await self._redis().eval(_RELEASE, 1, f"chat:turn:{session_id}", turn_id)

    async def ask_stop(self, session_id: str, turn_id: str) -> None:
        await self._redis().set(f"chat:stop:{session_id}", turn_id, ex=int(CLAIM_SECONDS))

    async def stop_asked(self, session_id: str, turn_id: str) -> bool:
        return await self._redis().get(f"chat:stop:{session_id}") == turn_id.encode()

    async def enqueue(self, session_id: str, turn_id: str, seconds: float) -> None:
        key = f"chat:queued:{session_id}:{turn_id}"
        await self._redis().set(key, 1, ex=max(1, int(seconds)))

    async def is_queued(self, session_id: str, turn_id: str) -> bool:
        return bool(await self._redis().exists(f"chat:queued:{session_id}:{turn_id}"))


_logs: dict[str, _MemoryLog | _RedisLog] = {}


def _log() -> _MemoryLog | _RedisLog:
    url = settings.REDIS_URL or ""
    if url not in _logs:
        _logs[url] = _RedisLog(url) if url else _MemoryLog()
    return _logs[url]


# --- Publishing and replaying --------------------------------------------------------------------


async def live_publish(
    session_id: str, event: dict[str, Any], *, ending: str | None = None
) -> dict[str, Any]:
    """Number ``event`` in its session, keep it for replay, and send it to the session's
    followers; returns it with its ``seq``. ``ending``: the id of the turn this event ends,
    whose claim on the session goes with it."""
    event = {key: value for key, value in event.items() if key != "seq"}
    seq = await _log().append(session_id, event, ending)
    numbered = event | {"seq": seq}
    # Encoded once, here: every follower sends this text as its frame, and strings cross the
    # channel layer without the deep copy (or, over Redis, the nested packing) a dict costs.
    message = {
        "type": _GROUP_MESSAGE,
        "session_id": session_id,
        "seq": seq,
        "text": json.dumps(numbered, separators=(",", ":")),
    }
    await get_channel_layer().group_send(ev.session_group(session_id), message)
    return numbered


def live_event(message: dict[str, Any]) -> dict[str, Any]:
    """The event a ``live_publish`` group message carries."""
    return json.loads(message["text"])  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Replay:
    """What a session's log holds after a point: ``complete`` when nothing in between is
    missing (else the page needs a snapshot); ``last`` is the session's latest ``seq``."""

    events: list[dict[str, Any]]
    complete: bool
    last: int


async def live_replay(session_id: str, *, after: int) -> Replay:
    """The session's events numbered above ``after``, as far as the log still holds them."""
    last, kept = await _log().read(session_id)
    missed = [event for event in kept if event["seq"] > after]
    first = missed[0]["seq"] if missed else last + 1
    return Replay(missed, complete=after <= last and first == after + 1, last=last)


async def live_next(session_id: str, *, after: int, event: dict[str, Any]) -> list[dict[str, Any]]:
    """What a follower that has shown the session's events up to ``after`` shows next on
    receiving ``event`` from the session's group: nothing when it has it already, else the
    events in between that the log holds (one may overtake another on its way through the
    channel layer), then ``event``; in order, once each."""
    if event["seq"] <= after + 1:
        return [event] if event["seq"] > after else []
    missed = (await live_replay(session_id, after=after)).events
    return [*(e for e in missed if e["seq"] < event["seq"]), event]


async def live_claimed(session_id: str) -> str | None:
    """The id of the turn being written in the session, if one is."""
    return await _log().claimed(session_id)


def _unended(events: list[dict[str, Any]]) -> str | None:
    """The last turn the events show begun and not ended."""
    started = [e["turn_id"] for e in events if e["type"] == "turn_started"]
    if not started or _ends(events, started[-1]):
        return None
    return started[-1]


async def live_end_abandoned(session_id: str) -> None:
    """End, for every follower, a turn the log shows begun and not ended that no longer holds
    its session: the web process writing it stopped mid-turn (its claim lapsed). Without this,
    pages would wait on it for ever."""
    _, events = await _log().read(session_id)
    turn_id = _unended(events)
    if turn_id is None or await live_claimed(session_id) == turn_id:
        return
    _, events = await _log().read(session_id)  # it may have ended meanwhile
    if _unended(events) != turn_id:
        return
    error = _error_body(
        "turn_lost",
        "this reply stopped when the web process writing it did; send it again",
        {"turn_id": turn_id},
    )
    await live_publish(
        session_id,
        {
            "type": "error",
            "session_id": session_id,
            "turn_id": turn_id,
            "error": error,
            "status": 502,
        },
    )


# --- Stopping a turn ------------------------------------------------------------------------------


def _stop_group(session_id: str) -> str:
    return f"turn.{session_id}"


async def live_stop(session_id: str) -> bool:
    """Ask the turn being written in the session to stop, from any process; False when none
    is. The request is kept beside the turn's claim as well as sent to it, so a turn that has
    not begun to listen yet (it has just been started) finds it when it does."""
    turn_id = await _log().claimed(session_id)
    if turn_id is None:
        return False
    await _log().ask_stop(session_id, turn_id)
    await get_channel_layer().group_send(
        _stop_group(session_id), {"type": _STOP_MESSAGE, "turn_id": turn_id}
    )
    return True


async def live_turn_stop(*, user: User, session_id: str) -> None:
    """Stop the turn being written in the user's open session; ``Conflict`` when none is."""
    await database_sync_to_async(session_for_turn)(user=user, session_id=session_id)
    with outages_refused():
        stopping = await live_stop(session_id)
    if not stopping:
        raise Conflict(
            "no reply is being written in this session", details={"session_id": session_id}
        )


@contextlib.asynccontextmanager
async def _in_group(group: str) -> AsyncIterator[str]:
    """A new channel of this process, a member of ``group`` while the block runs. Join before
    reading what the group's messages would tell: then nothing falls in between."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    try:
        yield channel
    finally:
        await layer.group_discard(group, channel)


@contextlib.asynccontextmanager
async def _stop_watch(session_id: str, turn_id: str) -> AsyncIterator[asyncio.Event]:
    """While the block runs, an event that is set once someone asks the turn to stop."""
    stopped = asyncio.Event()
    layer = get_channel_layer()
    async with _in_group(_stop_group(session_id)) as channel:

        async def listen() -> None:
            if await _log().stop_asked(session_id, turn_id):
                stopped.set()
                return
            while True:
                asked = (await layer.receive(channel)).get("turn_id")
                if asked == turn_id:
                    stopped.set()
                if asked in (turn_id, _WATCH_ENDED):
                    return

        listener = asyncio.create_task(listen())
        try:
            yield stopped
        finally:
            await _end_listener(listener, layer, channel)


_WATCH_ENDED = ""  # the turn id of the message that ends a stop watch's listener
_LISTENER_END_SECONDS = 5.0  # a layer slower than this delays the turn's last event no longer


async def _end_listener(listener: asyncio.Task[None], layer: Any, channel: str) -> None:
    """End a stop watch's listener with a message rather than a cancel: on Python 3.11 a cancel
    that lands while redis-py sends a command (under ``asyncio.wait_for``) is lost, and the
    receive then runs on for good, holding the channel layer's receive lock (measured: after
    one REST turn with Redis). A cancel is the fallback when the layer cannot take the
    message."""
    if not listener.done():
        try:
            await layer.send(channel, {"type": _STOP_MESSAGE, "turn_id": _WATCH_ENDED})
        except OUTAGES:
            listener.cancel()
        await asyncio.wait([listener], timeout=_LISTENER_END_SECONDS)
        listener.cancel()
    if not listener.cancelled() and listener.done():
        listener.exception()  # retrieved: a layer that failed mid-turn is the turn's to report


# --- Turns ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveTurn:
    """A turn ready to start: what to ask, and how many of the session's messages it keeps;
    ``again`` prepares it anew, for when it waited for the turns before it to end."""

    turn: ChatTurn
    kept_messages: int
    again: Callable[[], LiveTurn] | None = None


def live_turn_prepare(
    *,
    user: User,
    session_id: str,
    kind: Literal["send", "regenerate", "edit"],
    content: str | None = None,
    message_id: int | None = None,
    max_tokens: int = turns.MAX_TOKENS_DEFAULT,
    opened: bool = False,
) -> LiveTurn:
    """A new prompt (``send``), the last prompt asked again (``regenerate``), or the user
    message ``message_id`` replaced by ``content`` (``edit``), in the user's open session;
    ``opened``: the session was opened for this turn (closed again if it is refused)."""
    session = session_for_turn(user=user, session_id=session_id)
    user_check_active(user=session.user)  # afresh: a chat socket's user object outlives a change
    messages = Message.objects.filter(session=session)  # user, assistant, user, assistant…
    keep_turns = None
    if kind == "send":
        assert content is not None
        kept, prompt = messages.count(), content
        held = kept
    else:
        roles = list(messages.values_list("pk", "role"))  # a turn records both at once
        held = len(roles)
        if kind == "regenerate":
            asked = [i for i, (_, role) in enumerate(roles) if role == Message.Role.USER]
            if not asked:
                raise Conflict(
                    "there is no reply to regenerate yet", details={"session_id": session_id}
                )
            kept = asked[-1]
            prompt = messages.get(pk=roles[kept][0]).content
        else:
            assert content is not None
            where = [
                i
                for i, (pk, role) in enumerate(roles)
                if pk == message_id and role == Message.Role.USER
            ]
            if not where:
                raise NotFound(
                    f"this session has no message {message_id} of yours",
                    details={"message_id": message_id},
                )
            kept, prompt = where[0], content
        keep_turns = kept // 2
    turn = ChatTurn(
        user=user,
        agent_id=session.agent_id,
        prompt=prompt,
        session_id=str(session.pk),
        max_tokens=max_tokens,
        keep_turns=keep_turns,
        session=session,
        new_session=opened,
        turns=held // 2,
    )

    def again() -> LiveTurn:
        return live_turn_prepare(
            user=user,
            session_id=session_id,
            kind=kind,
            content=content,
            message_id=message_id,
            max_tokens=max_tokens,
            opened=opened,
        )

    return LiveTurn(turn, kept, again)


async def live_turn_start(*, live: LiveTurn) -> dict[str, Any]:
    """Start the turn as a task of this process that outlives the socket (or request) that
    asked; its events go to the session's followers. Returns its ``turn_started`` event (its
    ``turn_id`` and ``seq``); while another turn is being written, its ``turn_id`` and the
    session's latest ``seq``: the task waits for that turn to end, then starts it."""
    turn = live.turn
    assert turn.session_id is not None
    session_id, turn_id = turn.session_id, uuid.uuid4().hex
    with outages_refused():
        queued = not await _log().claim(session_id, turn_id, CLAIM_SECONDS)
        if queued:
            waits = settings.CHAT_TURN_QUEUE_SECONDS + CLAIM_SECONDS
            await _log().enqueue(session_id, turn_id, waits)
            last, _ = await _log().read(session_id)
            started = {"session_id": session_id, "turn_id": turn_id, "seq": last}
        else:
            started = await _announce(live, session_id, turn_id)
    # A context of its own, but for the request id: what the asker's context holds (its
    # request's thread for sync work, above all) ends with the request, the turn does not.
    request_id = current_request_id()
    task = asyncio.create_task(
        _run_detached(live, turn_id, request_id, queued=queued),
        name=f"chat-turn-{turn_id}",
        context=contextvars.Context(),
    )
    _running.add(task)
    task.add_done_callback(_running.discard)
    return started


async def _announce(live: LiveTurn, session_id: str, turn_id: str) -> dict[str, Any]:
    """Publish the claimed turn's ``turn_started``; the claim goes if that fails."""
    try:
        return await live_publish(
            session_id,
            {
                "type": "turn_started",
                "session_id": session_id,
                "turn_id": turn_id,
                "prompt": live.turn.prompt,
                "kept_messages": live.kept_messages,
            },
        )
    except BaseException:
        with contextlib.suppress(*OUTAGES):  # its claim lapses on its own
            await _log().release(session_id, turn_id)
        raise


_ENDS = frozenset({"done", "cancelled", "error"})


def _ends(events: list[dict[str, Any]], turn_id: str) -> bool:
    return any(e["type"] in _ENDS and e.get("turn_id") == turn_id for e in events)


async def live_follow(
    session_id: str, *, turn_id: str, after: int
) -> AsyncIterator[dict[str, Any]]:
    """The events of the turn ``turn_id`` numbered above ``after``, in order and once each:
    what the log holds, then live from the session's group (any process may run the turn),
    until the turn's last event (``done``, ``cancelled`` or ``error``)."""
    with outages_refused():
        async with _in_group(ev.session_group(session_id)) as channel:
            replay = await live_replay(session_id, after=after)
            if (
                not _ends(replay.events, turn_id)
                and await live_claimed(session_id) != turn_id
                and not await _log().is_queued(session_id, turn_id)
            ):
                replay = await live_replay(session_id, after=after)  # it may have ended meanwhile
                if not (replay.complete and _ends(replay.events, turn_id)):
                    raise Conflict(
                        "this turn's events are no longer kept: read the session's messages",
                        details={"session_id": session_id, "turn_id": turn_id},
                    )
            pending, seen = replay.events, after
            while True:
                for event in pending:
                    seen = event["seq"]
                    if event.get("turn_id") != turn_id:
                        continue
                    yield event
                    if event["type"] in _ENDS:
                        return
                message = await get_channel_layer().receive(channel)
                pending = await live_next(session_id, after=seen, event=live_event(message))


def _error_body(code: str, message: str, details: dict[str, Any] | None) -> ev.ErrorBody:
    return {"code": code, "message": message, "details": details or {}}


def _done_data(*, user: User, result: ChatResult) -> dict[str, Any]:
    done = {
        "messages": [message_data(message) for message in result.messages],
        "budgets": chat_budgets(user=user),
    }
    if result.messages and result.messages[-1].content != result.content:
        done["content"] = result.content  # as said, where the stored reply had to differ
    return done


async def _run_detached(live: LiveTurn, turn_id: str, request_id: str, *, queued: bool) -> None:
    with using_request_id(request_id):
        if queued:
            started = await _start_when_free(live, turn_id)
            if started is None:
                return
            live = started
        await _run(live, turn_id)


async def _start_when_free(live: LiveTurn, turn_id: str) -> LiveTurn | None:
    """Wait for the session (``CHAT_TURN_QUEUE_SECONDS`` at most), prepare the turn again (the
    turns before it changed the messages it keeps) and announce it; or end it with its
    refusal, for its followers. None when it did not start."""
    session_id = str(live.turn.session_id)
    head = {"session_id": session_id, "turn_id": turn_id}
    deadline = time.monotonic() + settings.CHAT_TURN_QUEUE_SECONDS
    claimed = False
    try:
        while not (claimed := await _log().claim(session_id, turn_id, CLAIM_SECONDS)):
            if time.monotonic() >= deadline:
                raise TurnQueueTimeout(
                    "a reply was still being written in this session when this turn had "
                    "waited as long as it may: stop that one, or send again",
                    details={
                        "session_id": session_id,
                        "waited_seconds": settings.CHAT_TURN_QUEUE_SECONDS,
                    },
                )
            await asyncio.sleep(_QUEUE_POLL_SECONDS)
        if live.again is not None:
            live = await database_sync_to_async(live.again)()
        await _announce(live, session_id, turn_id)
        return live
    except ConsoleError as exc:
        refusal = _refusal_event(exc) | head
    except OUTAGES as exc:
        log.warning("chat turn %s lost a backing service while queued: %r", turn_id, exc)
        refusal = _refusal_event(outage_refusal(exc)) | head
    with contextlib.suppress(*OUTAGES):  # with Redis gone, its claim lapses
        await live_publish(session_id, refusal, ending=turn_id if claimed else None)
    return None


async def _run(live: LiveTurn, turn_id: str) -> None:
    turn = live.turn
    session_id = str(turn.session_id)
    head = {"session_id": session_id, "turn_id": turn_id}

    async def end(event: dict[str, Any]) -> None:
        await live_publish(session_id, event | head, ending=turn_id)

    async def hold() -> None:
        while True:
            await asyncio.sleep(CLAIM_SECONDS / 3)
            await _log().renew(session_id, turn_id, CLAIM_SECONDS)

    last: list[dict[str, Any]] = []  # the turn's last event, sent once its stop watch is gone

    async def publish(name: str, data: Any) -> None:
        if name == "delta":
            await live_publish(session_id, {"type": "delta", **head, "text": data["text"]})
        elif name == "tool":
            await live_publish(session_id, {"type": "tool", **head, "tool": data})
        elif name == "done":
            done = await database_sync_to_async(_done_data)(user=turn.user, result=data)
            last.append({"type": "done", "kept_messages": live.kept_messages, **done})
        elif name == "cancelled":
            last.append({"type": "cancelled"})
        elif name == "error":
            error = _error_body(
                data.get("code") or "agent_error",
                data.get("message") or "the agent failed",
                data.get("details"),
            )
            # The runtime's stream ended with it: a refusal the gateway made (quota, bad
            # input) keeps its status, a fault mid-reply is a 502.
            status = data.get("status")
            last.append({"type": "error", "error": error, "status": refusal_status(status)})

    holding = asyncio.create_task(hold())
    try:
        async with _stop_watch(session_id, turn_id) as stopped:
            async for name, data in agent_chat_events_stoppable(turn=turn, stopped=stopped):
                await publish(name, data)
        # After the watch: a follower that ends at the last event (a request, a test's event
        # loop) leaves no receive of the watch's behind.
        for event in last:
            await end(event)
    except ConsoleError as exc:
        await end(_refusal_event(exc))
    except OUTAGES as exc:
        log.warning("chat turn %s lost a backing service: %r", turn_id, exc)
        with contextlib.suppress(*OUTAGES):  # the same outage may keep its end from everyone
            await end(_refusal_event(outage_refusal(exc)))
    except Exception:
        log.exception("chat turn %s in session %s failed", turn_id, session_id)
        error = _error_body("internal_error", "the console failed; it is logged", None)
        await end({"type": "error", "error": error, "status": 500})
    finally:
        holding.cancel()
        # When even the last event could not be sent; with Redis gone, the claim lapses.
        with contextlib.suppress(*OUTAGES):
            await _log().release(session_id, turn_id)


def _refusal_event(exc: ConsoleError) -> dict[str, Any]:
    error = _error_body(exc.code, exc.message, exc.details)
    refusal = {"type": "error", "error": error, "status": exc.status}
    if exc.retry_after is not None:
        refusal["retry_after"] = exc.retry_after
    return refusal


# --- Turns asked through the REST API ------------------------------------------------------------


def live_error(event: dict[str, Any]) -> ConsoleError:
    """The refusal a turn's ``error`` event stands for, with the HTTP status it answers with."""
    body = event["error"]
    exc = ConsoleError(
        body["message"], details=body.get("details"), retry_after=event.get("retry_after")
    )
    exc.code, exc.status = body["code"], event.get("status", 502)
    return exc


def live_result(event: dict[str, Any]) -> ChatResult:
    """The recorded turn a ``done`` event reports (its reply is the last message)."""
    reply = event["messages"][-1]
    return ChatResult(
        session_id=event["session_id"],
        content=event.get("content", reply["content"]),
        input_tokens=reply["input_tokens"],
        output_tokens=reply["output_tokens"],
        cost_usd=Decimal(reply["cost_usd"]),
    )


@dataclass(frozen=True, slots=True)
class FollowedTurn:
    """A live turn as one caller follows it: where it started, and its events from there."""

    session_id: str
    turn_id: str
    after: int

    def events(self) -> AsyncIterator[dict[str, Any]]:
        return live_follow(self.session_id, turn_id=self.turn_id, after=self.after)


async def live_turn_send(
    *, user: User, session_id: str, content: str, max_tokens: int, opened: bool = False
) -> FollowedTurn:
    """Start a turn asked through the REST API: a live turn like the page's, so a page that
    follows the session sees it, a stop from anywhere ends it, and it keeps the session to
    itself (waiting while another is being written)."""
    live = await database_sync_to_async(live_turn_prepare)(
        user=user,
        session_id=session_id,
        kind="send",
        content=content,
        max_tokens=max_tokens,
        opened=opened,
    )
    started = await live_turn_start(live=live)
    return FollowedTurn(session_id, started["turn_id"], started["seq"])


async def live_turn_result(followed: FollowedTurn) -> ChatResult:
    """Wait for a followed turn to end: its recorded result, or its refusal raised
    (``TurnCancelled`` when it was stopped)."""
    async with contextlib.aclosing(followed.events()) as events:  # leaves the group at once
        async for event in events:
            if event["type"] == "done":
                return live_result(event)
            if event["type"] == "cancelled":
                raise TurnCancelled(
                    "the turn was stopped", details={"session_id": followed.session_id}
                )
            if event["type"] == "error":
                raise live_error(event)
    raise ConsoleError("the turn ended without an outcome")  # live_follow stops only at one


async def live_turn_ask(
    *, user: User, agent_id: object, session_id: str | None, prompt: str, max_tokens: int
) -> FollowedTurn:
    """Start a turn asked of an agent (the Hypercore chat route, a one-shot task): in the
    user's session named, or a new one opened for it once the agent runs (it waits for one
    still booting); then a live turn like the page's."""
    asked = ChatTurn(
        user=user, agent_id=agent_id, prompt=prompt, session_id=session_id, max_tokens=max_tokens
    )
    _, session = await agent_turn_session(turn=asked)
    return await live_turn_send(
        user=user,
        session_id=str(session.pk),
        content=prompt,
        max_tokens=max_tokens,
        opened=session_id is None,
    )


async def task_execute(
    *, user: User, agent_id: uuid.UUID | None, task: str, context: Any, max_tokens: int
) -> tuple[Agent, ChatResult]:
    """Run a one-shot task on an agent, as a live turn in a session of its own, closed after;
    naming none when none runs, it waits for the user's pool to wake (``task_agent_waking``)."""
    agent = await task_agent_waking(user=user, agent_id=agent_id)
    followed = await live_turn_ask(
        user=user,
        agent_id=agent.pk,
        session_id=None,
        prompt=task_prompt(task, context),
        max_tokens=max_tokens,
    )
    try:
        result = await live_turn_result(followed)
    finally:
        await Session.objects.filter(pk=followed.session_id, closed_at__isnull=True).aupdate(
            closed_at=timezone.now()
        )
    return agent, result
