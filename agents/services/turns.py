"""Turns in flight, so that one can be stopped from anywhere: another request, another tab, or
another web process.

A running turn marks its session in the cache (Redis when ``REDIS_URL`` is set, so every process
sees it) and listens on the channel layer group of its session; ``turn_cancel`` sends to that
group. The turn's reader then closes its connection to the runtime, which cancels the runtime's
call to the gateway, which cancels Anthropic's and charges only what was used.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache

__all__ = ["turn_cancel", "turn_in_flight", "turn_watch"]

_CANCEL = "turn.cancel"


def _group(session_id: str) -> str:
    return f"turn.{session_id}"


def _marker(session_id: str) -> str:
    return f"turn-in-flight:{session_id}"


async def turn_in_flight(session_id: str) -> bool:
    return bool(await cache.aget(_marker(session_id)))


async def turn_cancel(session_id: str) -> bool:
    """Ask the session's running turn to stop; False when none is running."""
    if not await turn_in_flight(session_id):
        return False
    layer = get_channel_layer()
    await layer.group_send(_group(session_id), {"type": _CANCEL})
    return True


@contextlib.asynccontextmanager
async def turn_watch(session_id: str) -> AsyncIterator[asyncio.Event]:
    """While the block runs, the session's turn is in flight; the event is set when someone
    asks it to stop."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(_group(session_id), channel)
    await cache.aset(_marker(session_id), channel, timeout=settings.AGENT_CHAT_TIMEOUT_SECONDS)
    cancelled = asyncio.Event()

    async def listen() -> None:
        while (await layer.receive(channel)).get("type") != _CANCEL:
            pass
        cancelled.set()

    listener = asyncio.ensure_future(listen())
    try:
        yield cancelled
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await cache.adelete(_marker(session_id))
        await layer.group_discard(_group(session_id), channel)
