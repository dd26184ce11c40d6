"""The fields of a chat turn, declared once for the serializers, the chat socket, the OpenAPI
description and the agent runtime."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CHAT_RESULT_SCHEMA",
    "DEFAULT_MODEL",
    "HISTORY_MAX_BYTES",
    "MAX_TOKENS_DEFAULT",
    "MAX_TOKENS_MAX",
    "MAX_TOKENS_MIN",
]

# The bounds /api/v1's OpenAPI description documents; a model's own limit may be lower, and
# Anthropic refuses past it.
MAX_TOKENS_MIN = 1
MAX_TOKENS_MAX = 128_000
MAX_TOKENS_DEFAULT = 4096

DEFAULT_MODEL = "claude-sonnet-5-5"
# The largest chat body a runtime takes: one that carries a session's stored history back to a
# runtime started afresh. The console sends the newest turns that fit.
HISTORY_MAX_BYTES = 16 * 1024 * 1024

# A turn's result as JSON, and the data of a streamed turn's ``done`` event: the OpenAPI schema's
# ``ChatResult`` and the AsyncAPI document's.
CHAT_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "session_id": {"type": "string"},
        "content": {"type": "string"},
        "usage": {
            "type": "object",
            "properties": {
                "input_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
            "required": ["input_tokens", "output_tokens", "total_tokens"],
        },
        "cost_usd": {"type": "string", "format": "decimal"},
        "status": {"type": "string", "enum": ["completed"]},
    },
    "required": ["session_id", "content", "usage", "cost_usd", "status"],
}
