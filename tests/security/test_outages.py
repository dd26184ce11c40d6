"""Outages: a broker or Redis that is down answers 503 naming it and leaves nothing half-done;
``/ready`` tells the truth before, during and after, and after many chat turns.

Services are made unreachable by pointing a setting at a closed loopback port (never by stopping
the shared Redis); the broker is the real Celery app publishing to that port.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.test import Client

from agents import services
from agents.models import Agent, AgentDemand
from config.celery import app
from console.models import Quota
from tests.fakes.anthropic import Text
from tests.polling import eventually
from tests.servers import Server, server_start, server_stop

pytestmark = pytest.mark.django_db(transaction=True)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reset_publisher() -> None:
    app._pool = None  # connections (and their broker URL) are made afresh
    app.amqp._producer_pool = None


@pytest.fixture
def dead_broker(settings) -> Iterator[str]:
    """Tasks are published for real, to a broker whose port is closed."""
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    eager, broker = app.conf.task_always_eager, app.conf.broker_url
    app.conf.task_always_eager, app.conf.broker_url = False, url
    settings.CELERY_BROKER_URL = url
    _reset_publisher()
    yield url
    app.conf.task_always_eager, app.conf.broker_url = eager, broker
    _reset_publisher()


@pytest.fixture
def alice(user, api_key, live_console) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {api_key(user)}"}
    with httpx.Client(base_url=live_console, headers=headers, timeout=30) as http:
        yield http


@pytest.fixture
def running_agent(user, live_console) -> Agent:
    agent = services.agent_spawn(owner=user, name="steady", memory_mib=256)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    return agent


def _unavailable(response: httpx.Response, service: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]["service"]) == ("service_unavailable", service)
    assert response.headers["Retry-After"]


# --- The broker ----------------------------------------------------------------------------------


def test_a_spawn_the_broker_cannot_take_is_undone_and_its_key_can_be_retried(
    user, alice, dead_broker
):
    Quota.objects.update_or_create(user=user, defaults={"max_agents": 1})
    key = {"Idempotency-Key": "spawn-1"}
    for path in ("/api/v1/agents", "/v1/agents/spawn"):
        started = time.monotonic()
        _unavailable(alice.post(path, json={"name": "a", "memory": 256}, headers=key), "broker")
        assert time.monotonic() - started < 5
    assert not Agent.objects.exists()  # no row left pending, no quota held

    app.conf.task_always_eager = True  # the broker is back (tasks run here)
    spawned = alice.post("/api/v1/agents", json={"name": "a", "memory": 256}, headers=key)
    assert spawned.status_code == 201, spawned.text
    assert "Idempotent-Replayed" not in spawned.headers
    assert Agent.objects.get().status == Agent.Status.RUNNING


def test_an_execute_whose_wake_the_broker_cannot_take_leaves_no_demand(user, alice, dead_broker):
    started = time.monotonic()
    response = alice.post("/api/v1/execute", json={"task_description": "Wake up"})

    _unavailable(response, "broker")
    assert time.monotonic() - started < 5  # not the boot wait
    assert not AgentDemand.objects.exists()
    assert not Agent.objects.exists()


def test_stop_start_restart_and_delete_the_broker_cannot_take_change_nothing(
    alice, running_agent, settings
):
    stopped = services.agent_spawn(owner=running_agent.owner, name="off", memory_mib=256)
    services.agent_stop(agent=stopped)
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    app.conf.task_always_eager, app.conf.broker_url = False, url
    _reset_publisher()
    try:
        for agent, action in (
            (running_agent, "stop"),
            (running_agent, "restart"),
            (stopped, "start"),
        ):
            before = Agent.objects.values("status", "endpoint").get(pk=agent.pk)
            _unavailable(alice.post(f"/api/v1/agents/{agent.pk}/{action}"), "broker")
            assert Agent.objects.values("status", "endpoint").get(pk=agent.pk) == before, action
        _unavailable(alice.delete(f"/api/v1/agents/{running_agent.pk}"), "broker")
        running_agent.refresh_from_db()
        assert running_agent.deleted_at is None
        assert running_agent.status == Agent.Status.RUNNING
    finally:
        app.conf.task_always_eager, app.conf.broker_url = True, settings.CELERY_BROKER_URL
        _reset_publisher()


# --- Redis ---------------------------------------------------------------------------------------


def test_redis_unreachable_is_a_503_naming_it_and_ready_again_when_back(
    user, alice, running_agent, settings
):
    """The replay log and turns' claims live in Redis (REDIS_URL): pointed at a closed port,
    turns and stops are refused with 503 and /ready names Redis; pointed back, all is well."""
    session = services.session_create(user=user, agent_id=running_agent.pk, title="")
    back = settings.REDIS_URL
    settings.READY_TIMEOUT_SECONDS = 1.0
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"

    ready = alice.get("/ready")
    assert ready.status_code == 503
    assert "redis" in ready.json()["failing"]
    turn = f"/api/v1/sessions/{session.pk}/messages"
    _unavailable(alice.post(turn, json={"content": "hi"}), "redis")
    _unavailable(alice.post(turn, json={"content": "hi", "stream": True}), "redis")
    _unavailable(alice.post(f"/api/v1/sessions/{session.pk}/cancel"), "redis")

    settings.REDIS_URL = back
    assert alice.get("/ready").status_code == 200, alice.get("/ready").text
    reply = alice.post(turn, json={"content": "hi"})
    assert reply.status_code == 200, reply.text


def test_a_socket_whose_redis_is_gone_gets_a_503_event_and_stays_open(
    user, running_agent, live_console, settings
):
    session = services.session_create(user=user, agent_id=running_agent.pk, title="")
    with _socket(user, live_console) as ws:
        _until(ws, {"ready"})
        back, settings.REDIS_URL = settings.REDIS_URL, f"redis://127.0.0.1:{_closed_port()}/0"
        ws.send(json.dumps({"type": "send", "session_id": str(session.pk), "content": "hi"}))
        error = _until(ws, {"error"})[-1]
        assert error["error"]["code"] == "service_unavailable"
        assert error["error"]["details"] == {"service": "redis"}
        settings.REDIS_URL = back
        ws.send(json.dumps({"type": "send", "session_id": str(session.pk), "content": "hi"}))
        assert _until(ws, {"done", "error"})[-1]["type"] == "done"


class PrivateRedis:
    """A redis-server of this test's own, on a port of its own: stopping it stops no one else."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder = _closed_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server: Server | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.server.process if self.server is not None else None

    def start(self) -> None:
        options = {"port": self.port, "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        command = ["redis-server", "--dir", str(self.folder)]
        for name, value in options.items():
            command += [f"--{name}", str(value)]
        log = self.folder / "redis-server.log"
        self.server = server_start(command, log=log, port=self.port, timeout=10)

    def stop(self) -> None:
        if self.server is not None:
            server_stop(self.server, grace=0)
            self.server = None


@pytest.fixture
def private_redis(tmp_path, settings) -> Iterator[PrivateRedis]:
    """The console's Redis (REDIS_URL and the channel layer) is a private redis-server."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs the redis-server program (Debian's redis-server package)")
    server = PrivateRedis(tmp_path)
    server.start()
    settings.REDIS_URL = server.url
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": server.url, "socket_timeout": 30}]},
        }
    }
    yield server
    server.stop()


def _sse(lines) -> Iterator[tuple[str, dict]]:
    name = ""
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:])


@pytest.mark.timeout(90)
def test_redis_going_away_mid_turn_ends_the_stream_with_a_503_and_ready_comes_back(
    user, alice, running_agent, fake_anthropic, private_redis, settings, monkeypatch
):
    """Redis killed while a reply streams: the stream ends with an error event naming Redis,
    /ready answers 503 naming it (and quickly), and once Redis is back /ready is 200 and a new
    turn in the same session goes through."""
    settings.READY_TIMEOUT_SECONDS = 1.0
    monkeypatch.setattr(fake_anthropic, "chunk_delay", 0.1)
    fake_anthropic.enqueue(Text(" ".join(f"word{n}" for n in range(80))))
    session = services.session_create(user=user, agent_id=running_agent.pk, title="")
    turn = f"/api/v1/sessions/{session.pk}/messages"
    assert alice.get("/ready").status_code == 200

    events = []
    with alice.stream("POST", turn, json={"content": "a long story", "stream": True}) as stream:
        assert stream.status_code == 200
        for name, data in _sse(stream.iter_lines()):
            events.append((name, data))
            if name == "delta" and private_redis.process is not None:
                private_redis.stop()
    name, error = events[-1]
    assert name == "error", events[-3:]
    assert (error["code"], error["details"]) == ("service_unavailable", {"service": "redis"})

    started = time.monotonic()
    ready = alice.get("/ready")
    assert time.monotonic() - started < 3
    assert ready.status_code == 503
    assert {"channel_layer", "redis"} <= set(ready.json()["failing"])

    private_redis.start()
    eventually(
        lambda: alice.get("/ready").status_code == 200,
        15,
        every=0.2,
        failing=lambda: alice.get("/ready").text,
    )
    reply = alice.post(turn, json={"content": "again"})
    assert reply.status_code == 200, reply.text


def test_ready_answers_within_its_timeout_when_a_dependency_hangs(alice, settings):
    """A broker and a Redis that accept connections and never answer: /ready says so in
    about READY_TIMEOUT_SECONDS, every time, rather than hanging."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        settings.READY_TIMEOUT_SECONDS = 0.5
        settings.CELERY_BROKER_URL = url
        settings.REDIS_URL = url
        for _ in range(3):
            started = time.monotonic()
            ready = alice.get("/ready")
            assert time.monotonic() - started < 2.0
            assert ready.status_code == 503
            assert {"broker", "redis"} <= set(ready.json()["failing"])


# --- /ready after many turns ---------------------------------------------------------------------


def _socket(user, base: str):
    from websockets.sync.client import connect

    browser = Client()
    browser.force_login(user)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    return connect(
        base.replace("http", "ws") + "/ws/chat/",
        additional_headers={"Origin": base, "Cookie": cookie},
        open_timeout=10,
    )


def _until(ws, types: set[str]) -> list[dict]:
    found = []
    while True:
        found.append(json.loads(ws.recv(timeout=30)))
        if found[-1]["type"] in types:
            return found


def _turns_keep_the_process_ready(user, alice, agent, live_console, turns: int) -> None:
    # Each turn is two requests (the API's and the gateway's): past the default 100 a minute.
    Quota.objects.update_or_create(user=user, defaults={"requests_per_minute": None})
    session = services.session_create(user=user, agent_id=agent.pk, title="")
    sid = str(session.pk)
    assert alice.get("/ready").status_code == 200
    for n in range(turns // 2):
        reply = alice.post(f"/api/v1/sessions/{sid}/messages", json={"content": f"rest {n}"})
        assert reply.status_code == 200, reply.text
        if n % 10 == 9:
            ready = alice.get("/ready")
            assert ready.status_code == 200, (n, ready.text)
    with _socket(user, live_console) as ws:
        _until(ws, {"ready"})
        ws.send(json.dumps({"type": "open", "session_id": sid}))
        _until(ws, {"session"})
        for n in range(turns - turns // 2):
            ws.send(json.dumps({"type": "send", "session_id": sid, "content": f"ws {n}"}))
            assert _until(ws, {"done", "error"})[-1]["type"] == "done"
            if n % 10 == 9:
                ready = alice.get("/ready")
                assert ready.status_code == 200, (n, ready.text)
    ready = alice.get("/ready")
    assert ready.status_code == 200, ready.text


@pytest.mark.timeout(180)
def test_a_hundred_chat_turns_leave_the_process_ready(user, alice, running_agent, live_console):
    _turns_keep_the_process_ready(user, alice, running_agent, live_console, turns=100)


@pytest.mark.redis
@pytest.mark.timeout(180)
def test_a_hundred_chat_turns_on_redis_leave_the_process_ready(
    user, alice, running_agent, live_console
):
    """Measured before the fix: after one REST turn, /ready answered 503 "channel_layer: no
    answer" in that process for good."""
    _turns_keep_the_process_ready(user, alice, running_agent, live_console, turns=100)
