"""Calls to Anthropic's Messages API: the request passed on as it came (only the credential is
the platform's), retried when Anthropic asks for it, within the gateway's deadline.

Retried: 408, 409, 429, 5xx (529 "overloaded" among them) and connection failures, up to
``ANTHROPIC_MAX_RETRIES`` times, after Anthropic's ``retry-after-ms``/``retry-after`` when it
gives one (up to a minute), else after an exponential backoff with jitter, as Anthropic's SDKs
do; never when Anthropic answers ``x-should-retry: false``.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Mapping

import httpx
from django.conf import settings

from console.gateway.calls import UpstreamError, past_deadline

__all__ = ["ANTHROPIC_URL", "forward_headers", "upstream_open"]

ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
_RETRIED = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
_PASSED_ON = ("anthropic-version", "anthropic-beta", "accept", "user-agent")
_MAX_BACKOFF = 8.0
_MAX_RETRY_AFTER = 60.0

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[object, httpx.AsyncClient]]
_clients = weakref.WeakKeyDictionary()


def _client() -> httpx.AsyncClient:
    """One connection pool per event loop (and upstream), kept alive between calls."""
    base_url = settings.ANTHROPIC_BASE_URL or ANTHROPIC_URL
    key = (base_url, settings.ANTHROPIC_TIMEOUT_SECONDS)
    pools = _clients.setdefault(asyncio.get_running_loop(), {})
    client = pools.get(key)
    if client is None:
        client = pools[key] = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(settings.ANTHROPIC_TIMEOUT_SECONDS, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
        )
    return client


def forward_headers(incoming: Mapping[str, str], upstream_key: str) -> dict[str, str]:
    """The caller's Anthropic headers, with the platform's credential instead of theirs."""
    headers = {name: incoming[name] for name in _PASSED_ON if name in incoming}
    headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    headers["content-type"] = "application/json"
    headers["x-api-key"] = upstream_key
    return headers


def _retry_wait(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
            try:
                wait = float(response.headers.get(name, "")) / scale
            except ValueError:
                continue
            if 0 <= wait <= _MAX_RETRY_AFTER:
                return wait
    return min(0.5 * 2**attempt, _MAX_BACKOFF) * (1 - 0.25 * random.random())


async def upstream_open(body: bytes, headers: dict[str, str], *, stream: bool) -> httpx.Response:
    """POST the body to Anthropic and return its response: read whole, or for a stream once
    its headers arrive (the events still to come). Anthropic's own refusals are returned, not
    raised. Raises ``UpstreamError`` when Anthropic cannot be reached or misses the deadline."""
    client = _client()
    try:
        async with asyncio.timeout(settings.GATEWAY_DEADLINE_SECONDS):
            for attempt in range(settings.ANTHROPIC_MAX_RETRIES + 1):
                last = attempt == settings.ANTHROPIC_MAX_RETRIES
                request = client.build_request(
                    "POST", "/v1/messages", content=body, headers=headers
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.TransportError as exc:
                    if last:
                        raise UpstreamError(
                            502, "api_error", f"Anthropic could not be reached: {exc!r}"
                        ) from exc
                    await asyncio.sleep(_retry_wait(None, attempt))
                    continue
                retry = (
                    response.status_code in _RETRIED
                    and response.headers.get("x-should-retry") != "false"
                )
                if last or not retry:
                    if not stream:
                        await response.aread()
                    return response
                await response.aclose()
                await asyncio.sleep(_retry_wait(response, attempt))
    except TimeoutError as exc:
        raise past_deadline() from exc
    raise AssertionError("unreachable: the last attempt returns or raises")
