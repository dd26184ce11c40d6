"""The chat WebSocket (``/ws/chat/``): transport only.

A socket follows at most one session at a time. Frames are JSON objects whose ``type`` names
the handler (``client_<type>``); their payloads, and every event sent back, are the TypedDicts
of ``wire.events``. The work is the services': ``live_turn_prepare``/``live_turn_start`` run a
turn that outlives the socket, ``live_replay`` gives what a page missed, ``live_turn_stop`` stops
a turn from any process. Refusals become ``error`` events here, in ``receive``, and the socket
stays open. An idle socket costs its channel-layer membership and nothing else: no timer, no
task, no database work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from rest_framework import serializers

from agents.selectors import chat_session_owned, chat_snapshot
from agents.serializers import validated
from agents.services.live import (
    live_claimed,
    live_end_abandoned,
    live_event,
    live_next,
    live_replay,
    live_turn_prepare,
    live_turn_start,
    live_turn_stop,
)
from console.services import user_check_active
from plumbing.database import database_sync_to_async
from plumbing.errors import (
    OUTAGES,
    BadRequest,
    ConsoleError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UserSuspended,
    outage_refusal,
)
from plumbing.metrics import error_count
from plumbing.parsers import json_loads
from wire import events as ev
from wire import turns

__all__ = ["CLOSE_ANONYMOUS", "CLOSE_SUSPENDED", "ChatConsumer"]

log = logging.getLogger(__name__)
CLOSE_ANONYMOUS = 4401
CLOSE_SUSPENDED = 4403


# --- Frames a page sends -------------------------------------------------------------------------


class MalformedFrame(BadRequest):
    code = "malformed_frame"


class UnknownFrameType(BadRequest):
    code = "unknown_type"


class _SessionFrame(serializers.Serializer):
    session_id = serializers.UUIDField()


class _ResumeFrame(_SessionFrame):
    after = serializers.IntegerField(min_value=0)


class _TurnFrame(_SessionFrame):
    max_tokens = serializers.IntegerField(
        required=False,
        default=turns.MAX_TOKENS_DEFAULT,
        min_value=turns.MAX_TOKENS_MIN,
        max_value=turns.MAX_TOKENS_MAX,
    )


class _PromptFrame(_TurnFrame):
    content = serializers.CharField(max_length=200_000, trim_whitespace=False)

    def validate_content(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The message may not be blank.")
        return value


class _EditFrame(_PromptFrame):
    message_id = serializers.IntegerField(min_value=1)


def _valid(frame_class: type[serializers.Serializer], frame: dict[str, Any]) -> dict[str, Any]:
    data = validated(frame_class, frame)
    return data | {"session_id": str(data["session_id"])}


class _RateWindow:
    """At most ``per_minute`` frames in any minute, as a bucket that refills continuously."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.at = clock()

    def take(self) -> float:
        """0 when a frame may pass, else the seconds until one may."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


# --- The consumer --------------------------------------------------------------------------------


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One browser tab's chat socket."""

    # The frame rate window's clock: a test advances its own instead of waiting out a refill.
    rate_clock: Callable[[], float] = staticmethod(time.monotonic)

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_ANONYMOUS)
            return
        try:
            await database_sync_to_async(user_check_active)(user=user)
        except UserSuspended:
            await self.close(code=CLOSE_SUSPENDED)
            return
        self.user = user
        self.following: str | None = None
        self.last_seq = 0
        self.rate = _RateWindow(settings.CHAT_WS_MESSAGES_PER_MINUTE, clock=self.rate_clock)
        await self.accept()
        ready: ev.ReadyEvent = {
            "type": "ready",
            "user": user.get_username(),
            "max_frame_bytes": settings.CHAT_WS_MAX_FRAME_BYTES,
            "messages_per_minute": settings.CHAT_WS_MESSAGES_PER_MINUTE,
        }
        await self.send_json(ready)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "following", None):
            await self.channel_layer.group_discard(
                ev.session_group(self.following), self.channel_name
            )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Every frame: its size and rate, its JSON and type; then its handler. The one place
        where refusals become ``error`` events."""
        try:
            frame = self._decode(text_data, bytes_data)
            handler = getattr(self, f"client_{frame['type']}", None)
            await handler(frame)  # type: ignore[misc]
        except ConsoleError as exc:
            await self.send_json(_error_event(exc))
        except OUTAGES as exc:
            await self.send_json(_error_event(outage_refusal(exc)))
        except Exception:
            log.exception("chat frame failed")
            await self.send_json(
                _error_event(ConsoleError("the console failed; it is logged"), "internal_error")
            )

    def _decode(self, text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
        if wait := self.rate.take():
            raise RateLimited(
                "too many frames on this socket: slow down",
                details={
                    "limit": "messages_per_minute",
                    "value": settings.CHAT_WS_MESSAGES_PER_MINUTE,
                    "retry_after_seconds": round(wait, 2),
                },
            )
        if text_data is None:
            raise MalformedFrame("frames are JSON text, not binary")
        size = len(text_data.encode())
        if size > settings.CHAT_WS_MAX_FRAME_BYTES:
            raise PayloadTooLarge(
                f"the frame is larger than {settings.CHAT_WS_MAX_FRAME_BYTES} bytes",
                details={"limit": settings.CHAT_WS_MAX_FRAME_BYTES, "size": size},
            )
        frame = json_loads(text_data, refusal=MalformedFrame, what="frame")
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise MalformedFrame('a frame is a JSON object with a "type"')
        if not callable(getattr(self, f"client_{frame['type']}", None)):
            raise UnknownFrameType(
                f"unknown frame type {frame['type'][:40]!r}",
                details={"types": ["open", "resume", "send", "stop", "regenerate", "edit"]},
            )
        return frame

    # --- Handlers, one per client event type ------------------------------------------------

    async def client_open(self, frame: dict[str, Any]) -> None:
        await self._open(_valid(_SessionFrame, frame)["session_id"])

    async def client_resume(self, frame: dict[str, Any]) -> None:
        data = _valid(_ResumeFrame, frame)
        session_id = data["session_id"]
        await self._check_owned(session_id)
        await self._follow(session_id)
        await live_end_abandoned(session_id)
        replay = await live_replay(session_id, after=data["after"])
        if not replay.complete:  # the log no longer holds all of it: start from a snapshot
            await self._open(session_id)
            return
        self.last_seq = data["after"]
        await self._send_events(replay.events)

    async def client_send(self, frame: dict[str, Any]) -> None:
        data = _valid(_PromptFrame, frame)
        await self._start(data, kind="send", content=data["content"])

    async def client_regenerate(self, frame: dict[str, Any]) -> None:
        await self._start(_valid(_TurnFrame, frame), kind="regenerate")

    async def client_edit(self, frame: dict[str, Any]) -> None:
        data = _valid(_EditFrame, frame)
        await self._start(data, kind="edit", content=data["content"], message_id=data["message_id"])

    async def client_stop(self, frame: dict[str, Any]) -> None:
        await live_turn_stop(user=self.user, session_id=_valid(_SessionFrame, frame)["session_id"])

    # --- Channel-layer messages ----------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every handler, through the one
        # thread that runs all sync code: each chunk of every reply would queue there behind
        # the database work of other sockets. A chunk needs no database, and the handlers that
        # do (database_sync_to_async) close stale connections themselves.
        if message["type"] == "chat.event":
            await self.chat_event(message)
        else:
            await super().dispatch(message)

    async def chat_event(self, message: dict[str, Any]) -> None:
        """An event of a session's stream, from whichever process runs the turn: sent as
        published when it is the next one, as it nearly always is."""
        if message["session_id"] != self.following:
            return
        if message["seq"] == self.last_seq + 1:
            await self.send(text_data=message["text"])
            self.last_seq = message["seq"]
        else:
            event = live_event(message)
            await self._send_events(
                await live_next(self.following, after=self.last_seq, event=event)
            )

    # --- Helpers ---------------------------------------------------------------------------------

    async def _send_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event["seq"] > self.last_seq:
                await self.send_json(event)
                self.last_seq = event["seq"]

    async def _follow(self, session_id: str) -> None:
        if self.following == session_id:
            return
        if self.following:
            await self.channel_layer.group_discard(
                ev.session_group(self.following), self.channel_name
            )
        # Joined before the log is read: whatever is published meanwhile arrives after.
        await self.channel_layer.group_add(ev.session_group(session_id), self.channel_name)
        self.following, self.last_seq = session_id, 0

    async def _check_owned(self, session_id: str) -> None:
        owned = await database_sync_to_async(chat_session_owned)(
            user=self.user, session_id=session_id
        )
        if not owned:
            raise NotFound(f"you have no session {session_id}")

    async def _open(self, session_id: str) -> None:
        await self._check_owned(session_id)
        await self._follow(session_id)
        await live_end_abandoned(session_id)
        # The log before the messages: a turn that completes in between is in the replay.
        replay = await live_replay(session_id, after=0)
        running = await live_claimed(session_id)
        snapshot = await database_sync_to_async(chat_snapshot)(
            user=self.user, session_id=session_id
        )
        if snapshot is None:  # deleted meanwhile
            raise NotFound(f"you have no session {session_id}")
        started = [
            e["seq"]
            for e in replay.events
            if e["type"] == "turn_started" and e.get("turn_id") == running
        ]
        seq = started[0] - 1 if started else replay.last
        await self.send_json(snapshot | {"seq": seq, "running": running})
        self.last_seq = seq
        await self._send_events(replay.events)

    async def _start(self, data: dict[str, Any], *, kind: str, **fields: Any) -> None:
        session_id = data["session_id"]
        live = await database_sync_to_async(live_turn_prepare)(
            user=self.user,
            session_id=session_id,
            kind=kind,
            max_tokens=data["max_tokens"],
            **fields,
        )
        if self.following != session_id:
            await self._open(session_id)
        await live_turn_start(live=live)


def _error_event(exc: ConsoleError, code: str | None = None) -> ev.ErrorEvent:
    code = code or exc.code
    error_count(code)  # in agent_errors_total, as every answer in the error shape is
    return {
        "type": "error",
        "error": {"code": code, "message": exc.message, "details": exc.details},
    }
