"""Chat turns in flight do not hold the web process's pooled database connections.

A turn can stream for minutes while the console waits on the agent; its database steps (the
turn's start, its messages, its end) take milliseconds. Each step hands its connection back to
PostgreSQL's pool, so a web process serves many more turns at once than its pool has
connections.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
from collections.abc import Iterator
from urllib.parse import urlparse, urlunparse

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import connection

from agents import services
from agents.models import Agent, Message
from config.launch import web_command
from tests.conftest import PLATFORM_KEY
from tests.fakes.anthropic import Text
from tests.servers import free_port, serving

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

POOL = 4  # connections in the web process's pool
GATEWAY_THREADS = 1  # of which the gateway's database thread keeps one
TURNS = 8  # turns at once: twice the pool


@contextlib.contextmanager
def _web_process(fake_anthropic, tmp_path, **variables: str) -> Iterator[str]:
    """One daphne process, as ``make run`` starts it, on the test database with ``variables``."""
    parsed = urlparse(os.environ["DATABASE_URL"])
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": urlunparse(parsed._replace(path="/" + connection.settings_dict["NAME"])),
        "SECRET_KEY": django_settings.SECRET_KEY,
        "ANTHROPIC_API_KEY": PLATFORM_KEY,
        "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
        "ANTHROPIC_MAX_RETRIES": "0",
        "CONSOLE_VAR_DIR": str(tmp_path / "var"),
        "PYTHONUNBUFFERED": "1",
        **variables,
    }
    port = free_port()
    command = [sys.executable, *web_command("127.0.0.1", port)]
    url, log = f"http://127.0.0.1:{port}", tmp_path / "daphne.log"
    with serving(command, log=log, env=env, url=url, health="/health") as server:
        yield server.url


@pytest.fixture
def web_process(fake_anthropic, tmp_path) -> Iterator[str]:
    """A web process whose pool has ``POOL`` connections."""
    pool = {"DATABASE_POOL_MAX": str(POOL), "DATABASE_POOL_TIMEOUT": "3"}
    with _web_process(
        fake_anthropic, tmp_path, **pool, GATEWAY_DB_THREADS=str(GATEWAY_THREADS)
    ) as base:
        yield base


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_turns_in_flight_outnumber_the_pool(
    user, api_key, web_process, fake_anthropic, settings, monkeypatch, stream
):
    settings.GATEWAY_URL = f"{web_process}/gateway"  # the runtime's Claude calls, same process
    agent = services.agent_spawn(owner=user, name="pooled", memory_mib=256)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    sessions = [
        services.session_create(user=user, agent_id=agent.pk, title=f"s{n}") for n in range(TURNS)
    ]
    words = " ".join(f"w{n}" for n in range(10))
    monkeypatch.setattr(fake_anthropic, "chunk_delay", 0.2)  # each reply takes ~2 s
    for _ in sessions:
        fake_anthropic.enqueue(Text(words))
    key = api_key(user)

    def send(session_id: str) -> tuple[int, str]:
        response = httpx.post(
            f"{web_process}/api/v1/sessions/{session_id}/messages",
            json={"content": "Hello", "stream": stream},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        return response.status_code, response.text

    with concurrent.futures.ThreadPoolExecutor(TURNS) as pool:
        answers = list(pool.map(send, [str(s.pk) for s in sessions]))

    assert [status for status, _ in answers] == [200] * TURNS, answers
    for _, text in answers:
        assert "couldn't get a connection" not in text and words in text.replace('"', " "), text
    replies = Message.objects.filter(session__in=sessions, role=Message.Role.ASSISTANT)
    assert sorted(m.content for m in replies) == [words] * TURNS


def test_a_request_that_finds_the_pool_taken_is_told_to_retry(
    user, api_key, fake_anthropic, tmp_path
):
    """The gateway's database thread keeps the pool's one connection; the next request that
    needs the database waits ``DATABASE_POOL_TIMEOUT``, then is answered 503, not 500."""
    one_connection = {"DATABASE_POOL_MAX": "1", "DATABASE_POOL_TIMEOUT": "1"}
    with _web_process(fake_anthropic, tmp_path, **one_connection) as base:
        key = api_key(user)
        headers = {"Authorization": f"Bearer {key}"}
        fake_anthropic.enqueue(Text("ok"))
        call = httpx.post(
            f"{base}/gateway/v1/messages",
            json={"model": "claude-sonnet-5-5", "max_tokens": 16, "messages": _hello()},
            headers=headers,
            timeout=30,
        )
        assert call.status_code == 200, call.text
        answer = httpx.get(f"{base}/api/v1/agents", headers=headers, timeout=30)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "database_busy"
    assert answer.headers["Retry-After"] == "1"


def _hello() -> list[dict[str, str]]:
    return [{"role": "user", "content": "Hello"}]
