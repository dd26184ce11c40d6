"""Where a session's full turns are kept: every message of a turn (the prompt, Claude's replies
with their tool calls, the tool results) in the Messages API's shape, stored as the turn
completes, so that a runtime started afresh (after a crash, a restart or the loss of its host)
continues the conversation with every earlier tool result in context.

The console reaches the store through ``conversation_store()``, an implementation of
``ConversationStore`` named by the ``CONVERSATION_STORE`` setting; the default keeps turns in
``TurnContent`` rows. Another store (an object store, a document database) implements the
two methods below; the turn it is given is already bounded and valid.
"""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from agents.models import Message, Session, TurnContent

__all__ = [
    "BLOCK_CHARS",
    "ConversationStore",
    "DjangoConversationStore",
    "conversation_store",
    "session_turns",
    "turn_messages",
]

# The most characters one stored block keeps (a text, a tool result, a tool call's input as
# JSON); past it, the rest is left out and says so.
BLOCK_CHARS = 16_000
# The most messages, blocks and characters (as JSON) a stored turn has; a turn past them is
# stored as its text.
TURN_MESSAGES = 200
MESSAGE_BLOCKS = 64
TURN_CHARS = 1_000_000

Turn = list[dict[str, Any]]


class ConversationStore(Protocol):
    """A session's turns, by their place in the session (0 for its first)."""

    def record(self, *, session_id: str, position: int, messages: Turn) -> None:
        """Store the turn at ``position``; every stored turn from there on is replaced (a
        regenerated or edited turn drops those after it). Called inside the transaction that
        records the turn's ``Message`` rows."""
        ...

    def turns(self, *, session_id: str) -> list[Turn]:
        """Every turn of the session, in order: each its messages, the prompt first."""
        ...


class DjangoConversationStore:
    """The default store: one ``TurnContent`` row a turn. A turn recorded before turns were
    stored (only its ``Message`` rows hold it) comes back as its text."""

    def record(self, *, session_id: str, position: int, messages: Turn) -> None:
        TurnContent.objects.filter(session_id=session_id, position__gte=position).delete()
        TurnContent.objects.create(session_id=session_id, position=position, messages=messages)

    def turns(self, *, session_id: str) -> list[Turn]:
        stored = dict(
            TurnContent.objects.filter(session_id=session_id).values_list("position", "messages")
        )
        texts = list(Message.objects.filter(session_id=session_id).values_list("role", "content"))
        turns: list[Turn] = []
        for position in range(len(texts) // 2):
            if position in stored:
                turns.append(stored[position])
                continue
            (_, prompt), (_, reply) = texts[2 * position : 2 * position + 2]
            turns.append(_text_turn(prompt, reply))
        return turns


@functools.cache
def _store(path: str) -> ConversationStore:
    store: ConversationStore = import_string(path)()
    return store


def conversation_store() -> ConversationStore:
    """The store the ``CONVERSATION_STORE`` setting names."""
    return _store(settings.CONVERSATION_STORE)


def session_turns(*, session: Session) -> list[Turn]:
    """The session's turns as Claude saw them, from the store."""
    return conversation_store().turns(session_id=str(session.pk))


def _text_turn(prompt: str, reply: str) -> Turn:
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": [{"type": "text", "text": reply or "(no reply)"}]},
    ]


def _cut(text: str) -> str:
    # Model output may hold NUL characters, which PostgreSQL cannot store.
    text = text.replace("\x00", "\ufffd")
    if len(text) <= BLOCK_CHARS:
        return text
    return f"{text[:BLOCK_CHARS]}\n[… {len(text) - BLOCK_CHARS} more characters not kept]"


def _block(block: Any) -> dict[str, Any] | None:
    """A reported block as it is stored, bounded; None for one that is not a block."""
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return {"type": "text", "text": _cut(block["text"])}
    called = isinstance(block.get("id"), str) and isinstance(block.get("input"), dict)
    if kind == "tool_use" and called:
        raw = json.dumps(block["input"], ensure_ascii=False)
        given = block["input"] if len(raw) <= BLOCK_CHARS else {"input_not_kept": _cut(raw)}
        return {
            "type": "tool_use",
            "id": block["id"][:200],
            "name": str(block.get("name", ""))[:200],
            "input": json.loads(json.dumps(given).replace("\\u0000", "\\ufffd")),
        }
    if kind == "tool_result" and isinstance(block.get("tool_use_id"), str):
        content = block.get("content", "")
        if isinstance(content, list):
            content = "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
        return {
            "type": "tool_result",
            "tool_use_id": block["tool_use_id"][:200],
            "content": _cut(str(content)),
            "is_error": bool(block.get("is_error")),
        }
    return None


def _valid(messages: Turn) -> bool:
    """The turn alternates roles, ends with a reply, and answers every tool call in the next
    message (what the Messages API requires of a history)."""
    if not messages or messages[-1]["role"] != "assistant":
        return False
    for before, after in itertools.pairwise(messages):
        if before["role"] == after["role"]:
            return False
    for n, message in enumerate(messages):
        if message["role"] != "assistant" or not isinstance(message["content"], list):
            continue
        asked = {b["id"] for b in message["content"] if b["type"] == "tool_use"}
        if not asked:
            continue
        answer = messages[n + 1]["content"] if n + 1 < len(messages) else ""
        answered = {
            b["tool_use_id"] for b in answer if isinstance(b, dict) and b["type"] == "tool_result"
        }
        if asked != answered:
            return False
    return True


def turn_messages(*, reported: Any, prompt: str, content: str) -> Turn:
    """The messages of a completed turn as they are stored: the prompt as the console sent it,
    then those the runtime (not trusted) reported, each block bounded; a report that is not a
    valid turn is stored as the turn's text."""
    fallback = _text_turn(_cut(prompt), _cut(content))
    if not isinstance(reported, list) or not 2 <= len(reported) <= TURN_MESSAGES:
        return fallback
    messages: Turn = [fallback[0]]
    for message in reported[1:]:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return fallback
        blocks = message.get("content")
        if not isinstance(blocks, list) or not 0 < len(blocks) <= MESSAGE_BLOCKS:
            return fallback
        kept = [b for b in map(_block, blocks) if b is not None]
        if len(kept) != len(blocks):
            return fallback
        messages.append({"role": message["role"], "content": kept})
    if not _valid(messages) or len(json.dumps(messages)) > TURN_CHARS:
        return fallback
    return messages
