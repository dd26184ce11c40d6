"""How an agent runs a chat turn: its architecture.

``builtin`` is the runtime's own tool-use loop (``server.Turn``); ``claude_agent_sdk`` runs
the Claude Agent SDK's Claude Code CLI in the sandbox (``agentsdk``). Either way a turn is
driven the same way (``TurnRunner``) and streams the same events: ``delta``, ``tool``, then
the ``done`` result, or a ``ChatError``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ARCHITECTURES",
    "BUILTIN",
    "CLAUDE_AGENT_SDK",
    "Architecture",
    "ChatError",
    "TurnRunner",
    "architecture_problem",
    "turn_result",
]

BUILTIN = "builtin"
CLAUDE_AGENT_SDK = "claude_agent_sdk"
ARCHITECTURES = (BUILTIN, CLAUDE_AGENT_SDK)


class ChatError(Exception):
    """A chat turn failed; ``status`` and ``code`` become the error response."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


class TurnRunner(Protocol):
    """One chat turn, as the chat endpoint drives it: ``state`` is the runtime's, ``session``
    the turn's (``server.RuntimeState``, ``server.ChatSession``)."""

    state: Any
    session: Any
    content: str
    usage: dict[str, int]  # input_tokens and output_tokens, as Anthropic reported them
    messages: list[dict[str, Any]]  # what the turn added to the session's history

    def add(self, entry: dict[str, Any]) -> None:
        """Add ``entry`` to the session's history, as this turn's."""
        ...

    async def run(self) -> str:
        """The whole turn; returns the answer's text."""
        ...

    def stream(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The turn as ``delta`` and ``tool`` events; ``content`` holds the answer after it."""
        ...

    def result(self, content: str) -> dict[str, Any]:
        """The ``done`` body: session id, content, usage, status."""
        ...


class Architecture(Protocol):
    """Makes the turns of one runtime (a ``server.ChatSession``'s each); ``lifespan`` is an
    aiohttp cleanup context, for what it serves while the runtime runs."""

    name: str

    def turn(self, session: Any, max_tokens: int) -> TurnRunner: ...

    def lifespan(self, app: Any) -> AsyncIterator[None]: ...


def turn_result(turn: TurnRunner, content: str) -> dict[str, Any]:
    """A finished turn's ``done`` body: session id, content, usage, status, and the messages
    it added to the history (the console stores them)."""
    usage = turn.usage | {"total_tokens": turn.usage["input_tokens"] + turn.usage["output_tokens"]}
    return {
        "session_id": turn.session.id,
        "content": content,
        "usage": usage,
        "status": "completed",
        "messages": turn.messages,
    }


def _sdk_folder() -> Path | None:
    """Where the Claude Agent SDK is installed (found, not imported: it is large), or None."""
    try:
        spec = importlib.util.find_spec("claude_agent_sdk")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def architecture_problem(name: str) -> str | None:
    """Why this host cannot run agents of architecture ``name``, or None when it can."""
    if name == BUILTIN:
        return None
    if name == CLAUDE_AGENT_SDK:
        folder = _sdk_folder()
        if folder is None:
            return (
                "the Claude Agent SDK is not installed on this host "
                "(pip install 'agent-console[agent-sdk]')"
            )
        if not (folder / "_bundled" / "claude").is_file():
            return "the installed Claude Agent SDK bundles no Claude Code CLI for this platform"
        return None
    return f"unknown architecture {name!r}: one of {', '.join(ARCHITECTURES)}"
