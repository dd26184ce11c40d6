"""A reply survives moving its page from one web process to another mid-stream.

Two real web processes (daphne on uvloop, as ``make run`` starts them) share PostgreSQL and
Redis (channel layer and the replay log). A websocket client starts a turn on the first, leaves
in the middle of the reply, and resumes on the second from the last event it saw: it gets every
chunk exactly once, in order, then ``done``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from urllib.parse import urlparse, urlunparse

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client

from agents import services
from agents.models import Agent, Message
from config.launch import web_command
from tests.conftest import PLATFORM_KEY
from tests.fakes.anthropic import Text
from tests.servers import free_port, serving

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def _database_url() -> str:
    """``DATABASE_URL`` pointed at the test database this test writes to."""
    parsed = urlparse(os.environ["DATABASE_URL"])
    return urlunparse(parsed._replace(path="/" + connection.settings_dict["NAME"]))


@pytest.fixture
def web_processes(fake_anthropic, tmp_path) -> Iterator[list[str]]:
    """Two daphne processes on free loopback ports, on the test database; killed after."""
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": _database_url(),
        "SECRET_KEY": django_settings.SECRET_KEY,
        "ANTHROPIC_API_KEY": PLATFORM_KEY,
        "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
        "ANTHROPIC_MAX_RETRIES": "0",
        "CONSOLE_VAR_DIR": str(tmp_path / "var"),
        "PYTHONUNBUFFERED": "1",
    }
    with contextlib.ExitStack() as stack:
        servers = []
        for n in range(2):
            port = free_port()
            command = [sys.executable, *web_command("127.0.0.1", port)]  # as make run has it
            url, log = f"http://127.0.0.1:{port}", tmp_path / f"daphne-{n}.log"
            servers.append(
                stack.enter_context(serving(command, log=log, env=env, url=url, health="/health"))
            )
        yield [server.url for server in servers]


async def _next(ws, types: set[str] | None = None) -> dict:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout=20))
        if types is None or event["type"] in types:
            return event


def test_a_page_moved_to_another_process_mid_reply_gets_every_chunk_once(
    user, web_processes, fake_anthropic, settings, monkeypatch
):
    import websockets

    first, second = web_processes
    settings.GATEWAY_URL = f"{first}/gateway"  # where the agent's runtime calls Claude
    agent = services.agent_spawn(owner=user, name="two-processes", memory_mib=256)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    session = services.session_create(user=user, agent_id=agent.pk, title="moving")
    words = " ".join(f"w{n}" for n in range(24))
    monkeypatch.setattr(fake_anthropic, "chunk_delay", 0.15)
    fake_anthropic.enqueue(Text(words))
    browser = Client()
    browser.force_login(user)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    sid = str(session.pk)

    def connect(base: str):
        return websockets.connect(
            base.replace("http", "ws") + "/ws/chat/",
            additional_headers={"Origin": base, "Cookie": cookie},
        )

    async def scenario() -> tuple[list[dict], list[dict]]:
        before: list[dict] = []
        async with connect(first) as ws:
            await _next(ws, {"ready"})
            await ws.send(json.dumps({"type": "open", "session_id": sid}))
            await _next(ws, {"session"})
            await ws.send(json.dumps({"type": "send", "session_id": sid, "content": "Move me"}))
            while sum(e["type"] == "delta" for e in before) < 4:
                before.append(await _next(ws))
        after: list[dict] = []
        async with connect(second) as ws:
            await _next(ws, {"ready"})
            await ws.send(
                json.dumps({"type": "resume", "session_id": sid, "after": before[-1]["seq"]})
            )
            while not after or after[-1]["type"] not in {"done", "error", "cancelled"}:
                after.append(await _next(ws))
        return before, after

    before, after = asyncio.run(scenario())
    events = before + after
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "turn_started" and events[-1]["type"] == "done", events[-1]
    assert "".join(e["text"] for e in events if e["type"] == "delta") == words
    assert len(after) > 2, "the reply had ended before the page moved"
    assert [m.content for m in Message.objects.filter(session=session)] == ["Move me", words]
