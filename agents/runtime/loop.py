"""The pieces of Claude's tool-use loop that do not talk to the gateway.

A turn calls the gateway; while the reply stops for ``tool_use`` it runs every tool the reply
asked for, in order, answers with one user message of ``tool_result`` blocks and calls again, for
at most ``max_rounds`` rounds. A streamed reply is rebuilt here from its SSE events, so that the
assistant message kept in the history has the same blocks a non-streamed reply would have had.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agents.runtime.tools import ToolResult

__all__ = [
    "TOOL_EVENT_OUTPUT_LIMIT",
    "StreamedReply",
    "reply_text",
    "round_limit_note",
    "tool_event",
    "tool_result_block",
    "tool_uses",
]

TOOL_EVENT_OUTPUT_LIMIT = 2000


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
