"""The runtime's configuration, read once from the environment the sandbox was started with."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["RuntimeConfig"]


class ConfigError(ValueError):
    """A runtime environment variable is missing or malformed."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    agent_id: str
    host: str
    port: int
    gateway_url: str
    gateway_token: str
    model: str
    system_prompt: str
    max_concurrent_sessions: int
    gateway_timeout: float

    @classmethod
    def from_env(cls) -> RuntimeConfig:
        gateway_url = os.environ.get("AGENT_GATEWAY_URL", "").rstrip("/")
        if not gateway_url:
            raise ConfigError("AGENT_GATEWAY_URL is required")
        return cls(
            agent_id=os.environ.get("AGENT_ID", "local"),
            host=os.environ.get("AGENT_HOST", "127.0.0.1"),
            port=_int("AGENT_PORT", 8080),
            gateway_url=gateway_url,
            gateway_token=os.environ.get("AGENT_GATEWAY_TOKEN", ""),
            model=os.environ.get("AGENT_MODEL", "claude-sonnet-5-5"),
            system_prompt=os.environ.get("AGENT_SYSTEM_PROMPT", ""),
            max_concurrent_sessions=max(1, _int("AGENT_MAX_CONCURRENT_SESSIONS", 100)),
            gateway_timeout=float(_int("AGENT_GATEWAY_TIMEOUT", 600)),
        )
