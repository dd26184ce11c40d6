"""The short-lived tokens a sandbox host's agent relay asks of every request.

A token is ``<expiry>.<hmac>``: an HMAC-SHA256, under the deployment's relay key, of the agent
id, the method, the path (with its query) and the expiry (Unix seconds). The console makes one
for each request it sends to a relay; the relay checks it. Framework-free, like the rest of
``wire``, so that both sides read the same lines.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["HEADER", "token_check", "token_make"]

HEADER = "X-Relay-Token"
# Clocks of two machines differ a little: a token may expire this much later than its lifetime.
_SKEW_SECONDS = 5


def _mac(key: str, agent_id: str, method: str, path: str, expires: int) -> str:
    if not key:
        raise ValueError("the relay key is empty")
    message = f"{agent_id}\n{method.upper()}\n{path}\n{expires}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def token_make(
    key: str, *, agent_id: str, method: str, path: str, ttl: float, now: float | None = None
) -> str:
    """A token for one request to ``agent_id``'s ``method path``, valid ``ttl`` seconds."""
    expires = int((time.time() if now is None else now) + ttl)
    return f"{expires}.{_mac(key, agent_id, method, path, expires)}"


def token_check(
    key: str,
    token: str,
    *,
    agent_id: str,
    method: str,
    path: str,
    ttl: float,
    now: float | None = None,
) -> str | None:
    """Why ``token`` does not let its bearer make this request, or None when it does. A token
    that outlives ``ttl`` (and the clocks' skew) is refused too: it was not made by a console
    of this deployment's settings."""
    if not token:
        return "no token"
    expiry, _, mac = token.partition(".")
    if not expiry.isdigit() or len(mac) != 64:
        return "a malformed token"
    expires, now = int(expiry), time.time() if now is None else now
    if expires < now:
        return "an expired token"
    if expires > now + ttl + _SKEW_SECONDS:
        return "a token that lives too long"
    if not hmac.compare_digest(mac, _mac(key, agent_id, method, path, expires)):
        return "a token of another key, agent or request"
    return None
