"""/health and /ready: liveness always; readiness only while the database, the broker and the
channel layer answer, with the failing ones named. Failures are real: closed ports, a missing
folder, a console process started against services that are not there."""

from __future__ import annotations

import os
import socket
import sys

import httpx
import pytest

from tests.servers import serving

pytestmark = pytest.mark.django_db


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ready_when_every_check_answers(client, settings):
    response = client.get("/ready")

    assert response.status_code == 200
    checks = {"database": "ok", "broker": "ok", "channel_layer": "ok"}
    if settings.REDIS_URL:
        checks["redis"] = "ok"
    assert response.json() == {"status": "ok", "checks": checks}


def test_a_broker_that_refuses_connections_is_named(client, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{_closed_port()}/0"

    response = client.get("/ready")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["broker"]
    assert body["checks"]["broker"].startswith("error: ")
    assert body["checks"]["database"] == body["checks"]["channel_layer"] == "ok"


def test_an_embedded_broker_that_is_not_running_is_named(client, settings, tmp_path):
    from config import broker

    settings.READY_TIMEOUT_SECONDS = 1.0
    settings.CELERY_BROKER_URL = broker.embedded_url(tmp_path / "gone")

    response = client.get("/ready")

    assert response.status_code == 503
    assert response.json()["failing"] == ["broker"]


def test_a_channel_layer_that_cannot_be_reached_is_named(client, settings):
    settings.READY_TIMEOUT_SECONDS = 1.0
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{_closed_port()}/0"]},
        }
    }

    response = client.get("/ready")

    assert response.status_code == 503
    assert response.json()["failing"] == ["channel_layer"]


@pytest.mark.redis
def test_a_redis_channel_layer_and_broker_are_ready_when_redis_answers(client, settings):
    url = os.environ["REDIS_URL"]
    settings.CELERY_BROKER_URL = url
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [url]}}
    }

    response = client.get("/ready")

    assert response.status_code == 200, response.json()


def test_a_console_without_its_database_and_redis_is_alive_but_not_ready(tmp_path):
    """A web process started against a database and a Redis that are not there: /health
    answers, /ready names all four checks."""
    closed = _closed_port()
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "CONSOLE_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{closed}/nowhere",
        "DATABASE_POOL_MIN": "0",
        "DATABASE_POOL_TIMEOUT": "1",
        "REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        "READY_TIMEOUT_SECONDS": "1.5",
    }
    command = [
        *(sys.executable, "-m", "uvicorn", "config.asgi:application"),
        *("--port", str(port), "--log-level", "warning", "--lifespan", "off"),
    ]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "web.log"
    with serving(command, log=log, env=env, url=url, health="/health", accept=lambda _: True):
        health = httpx.get(f"{url}/health", timeout=2)
        assert health.status_code == 200

        ready = httpx.get(f"{url}/ready", timeout=10)

        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["failing"] == ["database", "broker", "channel_layer", "redis"]
        assert all(result.startswith("error: ") for result in body["checks"].values())
