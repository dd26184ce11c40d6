"""The fields of a chat turn, declared once for the serializers, the chat socket, the OpenAPI
description and the agent runtime."""

from __future__ import annotations

__all__ = [
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
