"""The chat WebSocket's event protocol, in one place: every frame is a JSON object with a
``type``. The README's "Chat over WebSockets" section describes the same events for people.

Client to server: ``open``, ``resume``, ``send``, ``stop``, ``regenerate``, ``edit``.

Server to client: ``ready`` (once, on connect), ``session`` (a snapshot, after ``open``), and the
session's stream: ``turn_started``, ``delta``, ``tool``, then one of ``done``, ``cancelled`` or
``error``. Events of a session's stream carry ``seq``, a number that grows by one per event of
that session; a page that lost its connection sends ``resume`` with the last ``seq`` it saw and
gets what it missed, then follows live. An ``error`` without ``seq`` answers the frame that
caused it and goes to that socket only.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "BudgetLeft",
    "CancelledEvent",
    "ClientEvent",
    "DeltaEvent",
    "DoneEvent",
    "EditRequest",
    "ErrorBody",
    "ErrorEvent",
    "MessageData",
    "OpenRequest",
    "ReadyEvent",
    "RegenerateRequest",
    "ResumeRequest",
    "SendRequest",
    "SessionEvent",
    "StopRequest",
    "ToolEvent",
    "TurnStartedEvent",
    "session_group",
]


def session_group(session_id: str) -> str:
    """The channel-layer group every socket following a session joins."""
    return f"chat.{session_id}"


# --- Client to server ----------------------------------------------------------------------------


class OpenRequest(TypedDict):
    """Follow a session: answered with a ``session`` snapshot, then its events live."""

    type: Literal["open"]
    session_id: str


class ResumeRequest(TypedDict):
    """Follow a session from after ``after`` (the last ``seq`` seen): the missed events, then
    live. When they are no longer all kept, a ``session`` snapshot instead."""

    type: Literal["resume"]
    session_id: str
    after: int


class SendRequest(TypedDict):
    """A new prompt at the end of the session."""

    type: Literal["send"]
    session_id: str
    content: str
    max_tokens: NotRequired[int]


class StopRequest(TypedDict):
    """Stop the reply being written (from any tab or process); Anthropic's call ends with it."""

    type: Literal["stop"]
    session_id: str


class RegenerateRequest(TypedDict):
    """Ask the last prompt again; the new reply replaces the last one when it completes."""

    type: Literal["regenerate"]
    session_id: str
    max_tokens: NotRequired[int]


class EditRequest(TypedDict):
    """Send ``content`` in place of the user message ``message_id``; that turn and every later
    one are replaced when the new reply completes."""

    type: Literal["edit"]
    session_id: str
    message_id: int
    content: str
    max_tokens: NotRequired[int]


ClientEvent = (
    OpenRequest | ResumeRequest | SendRequest | StopRequest | RegenerateRequest | EditRequest
)


# --- Server to client ----------------------------------------------------------------------------


class ErrorBody(TypedDict):
    """The console's one error shape."""

    code: str
    message: str
    details: dict[str, Any]


class ReadyEvent(TypedDict):
    """Sent once the socket is accepted: who is connected, and the socket's limits."""

    type: Literal["ready"]
    user: str
    max_frame_bytes: int
    messages_per_minute: int


class MessageData(TypedDict):
    """A recorded message; ``cost_usd`` is a decimal string."""

    id: int
    role: Literal["user", "assistant"]
    content: str
    input_tokens: int
    output_tokens: int
    cost_usd: str
    created_at: str


class BudgetLeft(TypedDict):
    """One of the user's budgets in its current window (decimal strings)."""

    metric: Literal["usd", "tokens"]
    window: str
    limit: str
    used: str
    remaining: str


class SessionEvent(TypedDict):
    """A session as it stands: its recorded messages, and ``seq``, the last event it had.
    ``running`` names the turn being written, whose events follow (replayed, then live)."""

    type: Literal["session"]
    session_id: str
    title: str
    agent_id: str
    agent_name: str
    agent_status: str
    closed: bool
    messages: list[MessageData]
    seq: int
    running: str | None
    budgets: list[BudgetLeft]


class TurnStartedEvent(TypedDict):
    """A turn began. ``kept_messages``: how many of the session's messages it keeps; the ones
    after are replaced if it completes (all of them for a plain ``send``)."""

    type: Literal["turn_started"]
    seq: int
    session_id: str
    turn_id: str
    prompt: str
    kept_messages: int


class DeltaEvent(TypedDict):
    """The next piece of the reply's text, as Claude writes it."""

    type: Literal["delta"]
    seq: int
    session_id: str
    turn_id: str
    text: str


class ToolEvent(TypedDict):
    """A tool the agent ran during the turn (``tool``: the runtime's tool event)."""

    type: Literal["tool"]
    seq: int
    session_id: str
    turn_id: str
    tool: dict[str, Any]


class DoneEvent(TypedDict):
    """The turn completed and is recorded: its two messages, with tokens and cost, replace
    every message after ``kept_messages``; ``budgets`` is what is left after it."""

    type: Literal["done"]
    seq: int
    session_id: str
    turn_id: str
    kept_messages: int
    messages: list[MessageData]
    budgets: list[BudgetLeft]
    content: NotRequired[str]  # the reply as said, where the recorded one had to differ


class CancelledEvent(TypedDict):
    """The turn was stopped: nothing of it is recorded, and only what was used is charged."""

    type: Literal["cancelled"]
    seq: int
    session_id: str
    turn_id: str


class ErrorEvent(TypedDict):
    """A refusal. With ``seq`` and ``turn_id``, a turn of the session ended with it (the quota,
    a rate limit, a budget, the agent down); without, it answers one frame of this socket."""

    type: Literal["error"]
    error: ErrorBody
    status: NotRequired[int]  # a turn's: the HTTP status the REST API answers it with
    retry_after: NotRequired[int]  # seconds, for a refusal that passes (a rate limit)
    seq: NotRequired[int]
    session_id: NotRequired[str]
    turn_id: NotRequired[str]
