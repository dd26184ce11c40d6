"""With REDIS_URL and DATABASE_URL set, the console really uses Redis and PostgreSQL."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache, caches
from django.db import connection


@pytest.mark.redis
def test_the_channel_layer_cache_and_broker_are_redis():
    layer = get_channel_layer()
    assert type(layer).__name__ == "RedisChannelLayer"
    assert settings.CELERY_BROKER_URL.startswith("redis://")

    async def round_trip() -> dict:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "ping", "n": 1})
        return await layer.receive(channel)

    assert async_to_sync(round_trip)() == {"type": "ping", "n": 1}
    cache.set("backing-services-test", 42, 10)
    assert cache.get("backing-services-test") == 42
    assert type(caches["default"]).__name__ == "RedisCache"


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_database_is_postgresql_through_a_psycopg_pool():
    assert connection.vendor == "postgresql"
    assert connection.settings_dict["OPTIONS"]["pool"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        assert "PostgreSQL" in cursor.fetchone()[0]
