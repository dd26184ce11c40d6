"""The runtime's configuration, read once from the environment the sandbox was started with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from agents.runtime.architectures import BUILTIN, architecture_problem
from wire import turns

__all__ = ["ConfigError", "RuntimeConfig", "env_int"]


class ConfigError(ValueError):
    """A runtime environment variable is missing or malformed."""


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """The integer in ``name`` (``default`` when unset or empty), at least ``minimum``."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def _listen() -> tuple[str, int, str]:
    """(host, port, socket path) from SANDBOX_LISTEN, set by the sandbox, else AGENT_HOST/PORT."""
    listen = os.environ.get("SANDBOX_LISTEN", "")
    if listen.startswith("unix:"):
        return "", 0, listen.removeprefix("unix:")
    if listen.startswith("tcp:"):
        host, _, port = listen.removeprefix("tcp:").rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"SANDBOX_LISTEN must be unix:<path> or tcp:<host>:<port>: {listen!r}"
            )
        return host, int(port), ""
    if listen:
        raise ConfigError(f"SANDBOX_LISTEN must be unix:<path> or tcp:<host>:<port>: {listen!r}")
    return os.environ.get("AGENT_HOST", "127.0.0.1"), env_int("AGENT_PORT", 8080), ""


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """How requests reach the gateway: SANDBOX_GATEWAY, the sandbox's one way out, is a Unix
    socket or a TCP address standing in for the gateway URL's host. Either way the requests
    still name that host: in their Host header and, over TLS, to check its certificate."""

    url: str  # where requests are sent
    socket: str = ""
    host_header: str = ""
    tls_name: str | None = None

    @classmethod
    def from_env(cls, url: str) -> GatewayRoute:
        route = os.environ.get("SANDBOX_GATEWAY", "")
        if route.startswith("unix:"):
            return cls(url, socket=route.removeprefix("unix:"))
        address = route.removeprefix("tcp:")
        if route.startswith("tcp:") and address.rpartition(":")[2].isdigit():
            parts = urlsplit(url)
            return cls(
                urlunsplit(parts._replace(netloc=address)),
                host_header=parts.netloc,
                tls_name=parts.hostname if parts.scheme == "https" else None,
            )
        if route:
            raise ConfigError(
                f"SANDBOX_GATEWAY must be unix:<path> or tcp:<host>:<port>: {route!r}"
            )
        return cls(url)


def _secret(name: str) -> str:
    """A secret from the sandbox's secrets folder (read once, then deleted), else the env."""
    folder = os.environ.get("SANDBOX_SECRETS", "")
    if folder:
        path = Path(folder) / name
        try:
            value = path.read_text()
        except OSError:
            pass
        else:
            path.unlink(missing_ok=True)
            return value
    return os.environ.get(name, "")


def _architecture() -> str:
    """AGENT_ARCHITECTURE: how the agent runs its turns, when this runtime can run it."""
    name = os.environ.get("AGENT_ARCHITECTURE", "") or BUILTIN
    if problem := architecture_problem(name):
        raise ConfigError(f"AGENT_ARCHITECTURE: {problem}")
    return name


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    agent_id: str
    host: str
    port: int
    socket_path: str
    gateway: GatewayRoute
    gateway_token: str
    model: str
    system_prompt: str
    max_concurrent_sessions: int
    gateway_timeout: float
    architecture: str = BUILTIN

    @classmethod
    def from_env(cls) -> RuntimeConfig:
        gateway_url = os.environ.get("AGENT_GATEWAY_URL", "").rstrip("/")
        if not gateway_url:
            raise ConfigError("AGENT_GATEWAY_URL is required")
        host, port, socket_path = _listen()
        return cls(
            agent_id=os.environ.get("AGENT_ID", "local"),
            host=host,
            port=port,
            socket_path=socket_path,
            gateway=GatewayRoute.from_env(gateway_url),
            gateway_token=_secret("AGENT_GATEWAY_TOKEN"),
            model=os.environ.get("AGENT_MODEL", turns.DEFAULT_MODEL),
            system_prompt=os.environ.get("AGENT_SYSTEM_PROMPT", ""),
            max_concurrent_sessions=max(1, env_int("AGENT_MAX_CONCURRENT_SESSIONS", 100)),
            gateway_timeout=float(env_int("AGENT_GATEWAY_TIMEOUT", 600)),
            architecture=_architecture(),
        )
