"""What ``/ready`` checks: the database, the Celery broker and the channel layer, each within
``READY_TIMEOUT_SECONDS``, all at once."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

__all__ = ["readiness"]


def _database() -> None:
    # Runs on a pool thread: its connection is given back (to the pool, or closed) at once.
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


def _broker() -> None:
    """Connect to the broker the settings name (a server-less broker: its folder is there and
    writable)."""
    from console.celery import app

    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        folder = Path(settings.CELERY_BROKER_DIR)
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise OSError(f"the broker folder {folder} is missing or read-only")
        return
    timeout = settings.READY_TIMEOUT_SECONDS
    with app.connection_for_write(url=url, connect_timeout=timeout) as conn:
        conn.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0.1, interval_max=0.1, timeout=timeout
        )


async def _channel_layer() -> None:
    """A message sent to a fresh channel of the layer comes back."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured")
    channel = await layer.new_channel("ready.")
    token = uuid.uuid4().hex
    await layer.send(channel, {"type": "ready.check", "token": token})
    message = await layer.receive(channel)
    if message.get("token") != token:
        raise RuntimeError("the channel layer returned another message")


async def _check(name: str, work: Callable[[], Awaitable[None]]) -> tuple[str, str]:
    timeout = settings.READY_TIMEOUT_SECONDS
    try:
        await asyncio.wait_for(work(), timeout)
    except TimeoutError:
        return name, f"error: no answer within {timeout:g} s"
    except Exception as exc:  # any failure is the answer here; its class says which kind
        return name, f"error: {exc.__class__.__name__}"
    return name, "ok"


async def readiness() -> dict[str, str]:
    """Each check's name and ``ok``, or ``error: <what>``."""
    results = await asyncio.gather(
        _check("database", sync_to_async(_database, thread_sensitive=False)),
        _check("broker", sync_to_async(_broker, thread_sensitive=False)),
        _check("channel_layer", _channel_layer),
    )
    return dict(results)
