"""The pieces of Claude's tool-use loop that do not talk to the gateway.

A turn calls the gateway; while the reply stops for ``tool_use`` it runs every tool the reply
asked for, in order, answers with one user message of ``tool_result`` blocks and calls again, for
at most ``max_rounds`` rounds. A streamed reply is rebuilt here from its SSE events, so that the
assistant message kept in the history has the same blocks a non-streamed reply would have had.

Every call marks the system prompt (or, without one, the last tool) and the last message with
``cache_control``, so that a tool round reads the prefix the previous call wrote from
Anthropic's prompt cache. A session whose history nears the context window has its oldest turns
replaced by a summary (``compactable``, ``transcript``, ``summary_messages``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from agents.runtime.tools import ToolResult

__all__ = [
    "SUMMARY_PREFIX",
    "TOOL_EVENT_OUTPUT_LIMIT",
    "StreamedReply",
    "cache_marked",
    "compactable",
    "estimate_tokens",
    "reply_text",
    "round_limit_note",
    "summary_messages",
    "tool_event",
    "tool_result_block",
    "tool_uses",
    "transcript",
    "turn_starts",
]

TOOL_EVENT_OUTPUT_LIMIT = 2000
EPHEMERAL = {"type": "ephemeral"}
SUMMARY_PREFIX = "[Summary of the earlier part of this conversation]\n\n"
# What one block of a compacted turn keeps in the transcript the summary is written from.
TRANSCRIPT_BLOCK_CHARS = 4000


def cache_marked(
    system: str, tools: list[dict[str, Any]], messages: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """The system prompt, tools and messages of a call, with two of Anthropic's four cache
    breakpoints: the system prompt (the last tool without one) and the last message's last
    block. The history itself is left unmarked: the marks move with every call."""
    marked_system = None
    if system:
        marked_system = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
    if not system and tools:
        tools = [*tools[:-1], {**tools[-1], "cache_control": EPHEMERAL}]
    if messages:
        last = copy.copy(messages[-1])
        content = last["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
        # Anthropic refuses a mark on an empty text block.
        if blocks and (blocks[-1].get("type") != "text" or blocks[-1].get("text")):
            blocks[-1] = {**blocks[-1], "cache_control": EPHEMERAL}
            last["content"] = blocks
        messages = [*messages[:-1], last]
    return marked_system, tools, messages


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """A rough count of the tokens ``messages`` cost: four characters of their JSON a token."""
    return len(json.dumps(messages, ensure_ascii=False)) // 4 + 1 if messages else 0


def turn_starts(history: list[dict[str, Any]]) -> list[int]:
    """Where each turn starts: at a user prompt (text); a tool loop's results are user entries
    too, but not prompts, and a summary is not one either."""
    return [
        i
        for i, entry in enumerate(history)
        if entry["role"] == "user" and isinstance(entry["content"], str)
    ]


def compactable(history: list[dict[str, Any]], current: int, budget: int) -> int:
    """How many entries at the head of ``history`` to fold into a summary so that what is left
    costs at most ``budget`` tokens (else every turn before ``current``, the most that may go):
    whole turns only, so a tool_use never leaves its tool_result; 0 when there is none."""
    starts = turn_starts(history)
    # The first turn (or the summary before it) alone gains nothing: it is what a cut keeps.
    cuts = [start for start in starts[1:] if start <= current] if starts else []
    for cut in cuts:
        if estimate_tokens(history[cut:]) <= budget:
            return cut
    return cuts[-1] if cuts else 0


def _transcript_block(role: str, block: Any) -> str:
    if isinstance(block, str):
        text = block
    elif block.get("type") == "text":
        text = block.get("text", "")
    elif block.get("type") == "tool_use":
        text = f"[called {block.get('name')} with {json.dumps(block.get('input'))}]"
    elif block.get("type") == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
        failed = " (error)" if block.get("is_error") else ""
        text = f"[tool result{failed}: {content}]"
    else:
        return ""
    if len(text) > TRANSCRIPT_BLOCK_CHARS:
        text = text[:TRANSCRIPT_BLOCK_CHARS] + " [cut short]"
    return f"{role}: {text}"


def transcript(messages: list[dict[str, Any]]) -> str:
    """The messages as plain text, each block bounded, for Claude to summarise."""
    lines = []
    for message in messages:
        role = "User" if message["role"] == "user" else "Assistant"
        content = message["content"]
        for block in [content] if isinstance(content, str) else content:
            if line := _transcript_block(role, block):
                lines.append(line)
    return "\n\n".join(lines)


def summary_messages(summary: str) -> list[dict[str, Any]]:
    """The two entries that stand for the compacted turns at the head of the history."""
    return [
        {"role": "user", "content": [{"type": "text", "text": SUMMARY_PREFIX + summary}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Understood; I will carry on from there."}],
        },
    ]


def reply_text(content: list[dict[str, Any]]) -> str:
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


def tool_uses(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in content if b.get("type") == "tool_use"]


def tool_result_block(use: dict[str, Any], result: ToolResult) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "tool_use_id": use["id"],
        "content": result.output,
        "is_error": result.is_error,
    }


def tool_event(use: dict[str, Any], result: ToolResult) -> dict[str, Any]:
    """The ``tool`` SSE event a stream sends once a tool has run, so clients can show progress."""
    output = result.output
    if len(output) > TOOL_EVENT_OUTPUT_LIMIT:
        output = output[:TOOL_EVENT_OUTPUT_LIMIT] + "…"
    return {
        "name": use.get("name"),
        "input": use.get("input"),
        "is_error": result.is_error,
        "output": output,
    }


def round_limit_note(max_rounds: int) -> str:
    return (
        f"[Stopped: Claude asked for more tools after {max_rounds} rounds of tool use, the most "
        "one turn may have (AGENT_MAX_TOOL_ROUNDS); those last tool calls were not run.]"
    )


@dataclass
class StreamedReply:
    """One streamed reply's content blocks and stop reason, rebuilt from its SSE events.

    Text and tool_use blocks are kept (a tool_use's input arrives as ``input_json_delta``
    pieces of JSON, parsed once its block stops); other kinds of block are not.
    """

    stop_reason: str | None = None
    _blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    _json: dict[int, list[str]] = field(default_factory=dict)

    def feed(self, event: str, data: dict[str, Any]) -> str | None:
        """Take one event; return the text it adds to the reply, if any."""
        index = data.get("index", 0)
        if event == "content_block_start":
            block = data["content_block"]
            if block.get("type") == "text":
                self._blocks[index] = {"type": "text", "text": block.get("text", "")}
            elif block.get("type") == "tool_use":
                self._blocks[index] = {
                    "type": "tool_use",
                    "id": block["id"],
                    "name": block["name"],
                    "input": {},
                }
                self._json[index] = []
        elif event == "content_block_delta":
            delta = data["delta"]
            if delta.get("type") == "text_delta":
                text = delta["text"]
                if index in self._blocks:
                    self._blocks[index]["text"] += text
                else:  # a delta without its start: keep the text all the same
                    self._blocks[index] = {"type": "text", "text": text}
                return text
            if delta.get("type") == "input_json_delta" and index in self._json:
                self._json[index].append(delta.get("partial_json", ""))
        elif event == "content_block_stop" and index in self._json:
            raw = "".join(self._json.pop(index))
            self._blocks[index]["input"] = json.loads(raw) if raw.strip() else {}
        elif event == "message_delta":
            self.stop_reason = data.get("delta", {}).get("stop_reason") or self.stop_reason
        return None

    @property
    def content(self) -> list[dict[str, Any]]:
        """The blocks in order; empty text blocks dropped, as the API refuses them back."""
        blocks = [self._blocks[i] for i in sorted(self._blocks)]
        kept = [b for b in blocks if b["type"] != "text" or b["text"]]
        return kept or [{"type": "text", "text": ""}]
