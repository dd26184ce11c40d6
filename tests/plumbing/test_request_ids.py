"""Request ids and JSON logs: a request's id comes back on its answer, and is in the log lines
of the task it queued (in a real worker), of the agent runtime it called and of the gateway
call the runtime made; metrics from the web and worker processes add up on /metrics."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.models import Agent
from agents.services import agent_log_tail
from tests.gateway.test_metrics import _database_url
from tests.polling import eventually
from tests.servers import free_port, server_start, server_stop, serving
from wire.logs import JsonFormatter, RequestIdFilter, using_request_id

pytestmark = pytest.mark.django_db(transaction=True)


def json_lines(text: str) -> list[dict]:
    found = []
    for line in text.splitlines():
        start = line.find("{")  # a supervisor may prefix the runtime's lines
        if start < 0:
            continue
        try:
            found.append(json.loads(line[start:]))
        except ValueError:
            continue
    return found


class Captured(logging.Handler):
    """The records of one logger, with the request id filter a console handler has."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def gateway_log() -> Iterator[Captured]:
    logger = logging.getLogger("console.gateway")
    handler, level = Captured(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_request_id_comes_back_and_a_new_one_is_made_when_none_or_a_bad_one_is_sent(client):
    sent = client.get("/health", headers={"X-Request-ID": "trace-42.a"})
    none = client.get("/health")
    forged = client.get("/health", headers={"X-Request-ID": "x" * 300})

    assert sent["X-Request-ID"] == "trace-42.a"
    assert len(none["X-Request-ID"]) == 32
    assert forged["X-Request-ID"] not in ("x" * 300, none["X-Request-ID"])


def test_json_log_lines_carry_the_request_id_and_extra_fields():
    record = logging.LogRecord(
        "console.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None
    )
    record.agent_id = "a-1"
    with using_request_id("req-7"):
        RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))

    assert line["message"] == "hello you"
    assert line["level"] == "WARNING"
    assert line["logger"] == "console.x"
    assert line["request_id"] == "req-7"
    assert line["agent_id"] == "a-1"
    assert line["time"].endswith("+00:00")


def test_a_chat_turns_id_reaches_the_runtime_and_the_gateway(
    asgi_server, settings, fake_anthropic, user, api_key, gateway_log
):
    settings.CONSOLE_BASE_URL = asgi_server
    settings.GATEWAY_URL = f"{asgi_server}/gateway"
    api = httpx.Client(
        base_url=asgi_server, timeout=30, headers={"Authorization": f"Bearer {api_key(user)}"}
    )
    spawned = api.post(
        "/v1/agents/spawn", json={"user_id": "alice", "cores": 1, "memory": 256}
    ).json()
    agent = Agent.objects.get(pk=spawned["agent_id"])
    assert agent.status == "running", agent.last_error

    reply = api.post(
        f"{spawned['url']}/v1/agent/chat",
        json={"prompt": "Hello", "user_id": "alice", "max_tokens": 64, "stream": False},
        headers={"X-Request-ID": "turn-abc-123"},
    )

    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Request-ID"] == "turn-abc-123"
    runtime_lines = json_lines(agent_log_tail(agent=agent, lines=50))
    assert any(
        line.get("request_id") == "turn-abc-123" and line.get("path") == "/v1/agent/chat"
        for line in runtime_lines
    ), runtime_lines
    settled = [r for r in gateway_log.records if r.msg.startswith("gateway call settled")]
    assert [r.request_id for r in settled] == ["turn-abc-123"]


@pytest.fixture
def web_and_worker(tmp_path, settings):
    """A web process and a Celery worker, as ``make run`` starts them: one database, one broker
    (the test session's), one metrics folder, JSON logs."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTEST_CURRENT_TEST", "REDIS_URL"}}
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": _database_url(),
        "CONSOLE_VAR_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "SANDBOX_STATE_DIR": str(settings.SANDBOX_STATE_DIR),
        "SANDBOX_HOST_NAME": settings.SANDBOX_HOST_NAME,
        "METRICS_BEARER_TOKEN": "",
        "LOG_FORMAT": "json",
    }
    port = free_port()
    web = [
        *(sys.executable, "-m", "uvicorn", "config.asgi:application"),
        *("--port", str(port), "--log-level", "warning", "--lifespan", "off"),
    ]
    worker = [
        *(sys.executable, "-m", "celery", "-A", "config", "worker"),
        *("--pool", "solo", "--loglevel", "INFO", "--hostname", "obs-test@%h"),
    ]
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        worker_started = server_start(worker, log=tmp_path / "worker.log", env=env)
        stack.callback(server_stop, worker_started, grace=15)
        stack.enter_context(
            serving(
                web,
                log=tmp_path / "web.log",
                env=env,
                url=url,
                health="/health",
                also=[worker_started],
                grace=15,
            )
        )
        yield url, worker_started.log


def test_a_spawns_id_is_in_the_workers_log_and_both_processes_count_on_metrics(
    web_and_worker, user, api_key
):
    url, worker_log = web_and_worker
    api = httpx.Client(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {api_key(user)}"}
    )

    spawned = api.post(
        "/v1/agents/spawn",
        json={"user_id": "alice", "cores": 1, "memory": 256},
        headers={"X-Request-ID": "spawn-req-9"},
    )
    assert spawned.status_code == 201, spawned.text
    eventually(
        lambda: Agent.objects.get(pk=spawned.json()["agent_id"]).status == "running",
        60,
        every=0.2,
        failing=lambda: worker_log.read_text()[-3000:],
    )

    def task_lines() -> list[dict]:
        return [
            line
            for line in json_lines(worker_log.read_text())
            if "agents.tasks.agent_boot" in line.get("message", "")
        ]

    eventually(
        lambda: any("succeeded" in line["message"] for line in task_lines()),
        10,
        every=0.1,
        failing=lambda: worker_log.read_text()[-3000:],
    )
    succeeded = [line for line in task_lines() if "succeeded" in line["message"]]
    assert [line.get("request_id") for line in succeeded] == ["spawn-req-9"]

    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    # Counted by the worker, reported by the web process:
    assert found[("hypercore_agent_spawn_total", (("status", "success"),))] == 1
    assert found[("hypercore_agent_spawn_duration_seconds_count", ())] == 1
    # Counted by the web process itself:
    spawn = (("endpoint", "/v1/agents/spawn"), ("status", "201"))
    assert found[("agent_requests_total", spawn)] == 1
