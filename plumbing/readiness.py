"""What ``/ready`` checks: the database, the Celery broker, the channel layer and (with
``REDIS_URL``) Redis itself, each within ``READY_TIMEOUT_SECONDS``, all at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio
from asgiref.sync import sync_to_async
from celery import current_app
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["readiness"]


def _database() -> None:
    # Runs on a pool thread: its connection is given back (to the pool, or closed) at once.
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


def _broker() -> None:
    """Connect to the broker the settings name."""
    url = settings.CELERY_BROKER_URL
    timeout = settings.READY_TIMEOUT_SECONDS
    with current_app.connection_for_write(url=url, connect_timeout=timeout) as conn:
        conn.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0.1, interval_max=0.1, timeout=timeout
        )


async def _channel_layer() -> None:
    """A message sent to a fresh channel of this process comes back, through the layer's
    receive loop that the process's sockets share."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured")
    # The default prefix: channels_redis reads every channel of a process from one list named
    # after it, whichever receive holds its lock; a channel of another prefix would be read by
    # nobody while a socket or a turn of the process is receiving.
    channel = await layer.new_channel()
    token = uuid.uuid4().hex
    await layer.send(channel, {"type": "ready.check", "token": token})
    message = await layer.receive(channel)
    if message.get("token") != token:
        raise RuntimeError("the channel layer returned another message")


async def _redis() -> None:
    """Redis (the replay log, turns' claims, the cache) answers a PING, on a connection of its
    own: a pool whose connections are all busy must not make the process look down."""
    client = redis.asyncio.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=settings.READY_TIMEOUT_SECONDS,
        socket_timeout=settings.READY_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        await client.ping()
    finally:
        await client.aclose()


# Each check's run in flight: a check that outlasts its timeout goes on (cancelling a channel
# layer's receive mid-command can lose the cancellation on Python 3.11 and leave the receive
# running) and the next /ready waits on it instead of starting another, so a dependency that
# hangs holds one thread or receive per check, not one per probe.
_in_flight: dict[str, asyncio.Future[None]] = {}


async def _check(name: str, work: Callable[[], Awaitable[None]]) -> tuple[str, str]:
    timeout = settings.READY_TIMEOUT_SECONDS
    running = _in_flight.get(name)
    if running is None or running.done() or running.get_loop() is not asyncio.get_running_loop():
        running = _in_flight[name] = asyncio.ensure_future(work())
    try:
        await asyncio.wait_for(asyncio.shield(running), timeout)
    except TimeoutError:
        return name, f"error: no answer within {timeout:g} s"
    except Exception as exc:  # any failure is the answer here; its class says which kind
        return name, f"error: {exc.__class__.__name__}"
    return name, "ok"


async def readiness() -> dict[str, str]:
    """Each check's name and ``ok``, or ``error: <what>``."""
    checks = [
        _check("database", sync_to_async(_database, thread_sensitive=False)),
        _check("broker", sync_to_async(_broker, thread_sensitive=False)),
        _check("channel_layer", _channel_layer),
    ]
    if settings.REDIS_URL:
        checks.append(_check("redis", _redis))
    return dict(await asyncio.gather(*checks))
