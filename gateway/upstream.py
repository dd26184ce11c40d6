"""Calls to Anthropic's Messages API: the request passed on as it came (only the credential is
the platform's), retried when Anthropic asks for it, within the gateway's deadline.

Retried: 408, 409, 429, 5xx (529 "overloaded" among them) and connection failures, up to
``ANTHROPIC_MAX_RETRIES`` times, after Anthropic's ``retry-after-ms``/``retry-after`` when it
gives one (up to a minute), else after an exponential backoff with jitter, as Anthropic's SDKs
do; never when Anthropic answers ``x-should-retry: false``.

The client is aiohttp's: one connection pool per event loop, kept alive between calls. It costs
a fraction of the CPU per call of a general-purpose client, and every call pays it.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Mapping

import aiohttp
import yarl
from django.conf import settings

from gateway.calls import AnthropicUnreachable, past_deadline

__all__ = ["ANTHROPIC_URL", "forward_headers", "upstream_close", "upstream_open"]

ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
_RETRIED = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
_PASSED_ON = ("anthropic-version", "anthropic-beta", "accept", "user-agent")
_MAX_BACKOFF = 8.0
_MAX_RETRY_AFTER = 60.0

_Pools = dict[float, aiohttp.ClientSession]
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pools]
_sessions = weakref.WeakKeyDictionary()


def _session() -> aiohttp.ClientSession:
    """This event loop's connection pool (one per timeout in settings, for tests)."""
    key = settings.ANTHROPIC_TIMEOUT_SECONDS
    pools = _sessions.setdefault(asyncio.get_running_loop(), {})
    session = pools.get(key)
    if session is None or session.closed:
        session = pools[key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=10.0, sock_read=settings.ANTHROPIC_TIMEOUT_SECONDS
            ),
        )
    return session


def upstream_close() -> None:
    """Close every event loop's pool that is still running (at shutdown, and in tests)."""
    for loop, pools in list(_sessions.items()):
        sessions = list(pools.values())
        pools.clear()
        for session in sessions:
            if loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=5)


def forward_headers(incoming: Mapping[str, str], upstream_key: str) -> dict[str, str]:
    """The caller's Anthropic headers, with the platform's credential instead of theirs."""
    headers = {name: incoming[name] for name in _PASSED_ON if name in incoming}
    headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    headers["content-type"] = "application/json"
    headers["x-api-key"] = upstream_key
    return headers


def _retry_wait(response: aiohttp.ClientResponse | None, attempt: int) -> float:
    if response is not None:
        for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
            try:
                wait = float(response.headers.get(name, "")) / scale
            except ValueError:
                continue
            if 0 <= wait <= _MAX_RETRY_AFTER:
                return wait
    return min(0.5 * 2**attempt, _MAX_BACKOFF) * (1 - 0.25 * random.random())


def _why(exc: aiohttp.ClientError, url: str) -> str:
    """A sentence for why ``url`` could not be reached (aiohttp's reprs are not for people)."""
    host = yarl.URL(url).host
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the name {host} did not resolve (is this machine offline?)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"no connection to {host}: {exc.os_error.strerror or 'refused'}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{host} closed the connection"
    return f"{type(exc).__name__} talking to {host}"


async def upstream_open(
    body: bytes, headers: dict[str, str], *, stream: bool
) -> aiohttp.ClientResponse:
    """POST the body to Anthropic and return its response: read whole, or for a stream once
    its headers arrive (the events still to come, in ``response.content``). Anthropic's own
    refusals are returned, not raised. Raises ``UpstreamError`` when Anthropic cannot be
    reached or misses the deadline."""
    session = _session()
    url = (settings.ANTHROPIC_BASE_URL or ANTHROPIC_URL).rstrip("/") + "/v1/messages"
    try:
        async with asyncio.timeout(settings.GATEWAY_DEADLINE_SECONDS):
            for attempt in range(settings.ANTHROPIC_MAX_RETRIES + 1):
                last = attempt == settings.ANTHROPIC_MAX_RETRIES
                try:
                    response = await session.post(url, data=body, headers=headers)
                    retry = (
                        response.status in _RETRIED
                        and response.headers.get("x-should-retry") != "false"
                    )
                    if last or not retry:
                        if not stream:
                            await response.read()
                        return response
                except aiohttp.ClientError as exc:
                    if last:
                        raise AnthropicUnreachable(_why(exc, url)) from exc
                    await asyncio.sleep(_retry_wait(None, attempt))
                    continue
                response.release()
                await asyncio.sleep(_retry_wait(response, attempt))
    except TimeoutError as exc:
        raise past_deadline() from exc
    raise AssertionError("unreachable: the last attempt returns or raises")
