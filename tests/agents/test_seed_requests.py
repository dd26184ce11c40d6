"""The requests of the two seed documents, sent as they are written (with an API key added),
against a live console: each answer carries every field the seed documents (extra fields are
fine). ``../shared/seeds/000_…``: Hypercore's agent manager, its Usage section (spawn, chat,
list, delete); ``003_…``: the AI Agents Platform, its API Reference (execute, health, metrics,
rate limits, errors).

As in ``test_thin_path.py``, the console is served over ASGI, agents boot for real, and Claude is
the fake Anthropic server.
"""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from agents.models import Agent, Session
from console.models import Quota
from tests.conftest import PLATFORM_KEY

pytestmark = pytest.mark.django_db(transaction=True)

# What the seeds send, verbatim (000: "Spawn an Agent", "Chat with Agent").
SEED_SPAWN = {
    "user_id": "user-123",
    "anthropic_api_key": "sk-ant-api03-...",
    "cores": 4,
    "memory": 8192,
    "max_concurrent": 100,
    "system_prompt": "You are a helpful AI assistant.",
}
SEED_CHAT = {
    "prompt": "Explain quantum computing",
    "user_id": "user-123",
    "max_tokens": 4096,
    "stream": False,
}
# A key of the right shape, where the seed has its placeholder.
USERS_KEY = "sk-ant-api03-" + "k" * 40 + "_users-own-AA"

SPAWN_FIELDS = {
    "agent_id",
    "url",
    "metrics_url",
    "status",
    "created_at",
    "user_id",
    "cores",
    "memory",
}
CHAT_FIELDS = {"session_id", "content", "usage", "status"}
USAGE_FIELDS = {"input_tokens", "output_tokens", "total_tokens"}
EXECUTE_FIELDS = {"result", "metadata", "processing_time_ms"}
EXECUTE_METADATA = {"agent_id", "model", "tokens_used", "timestamp"}
HEALTH_FIELDS = {"status", "agent_id", "version", "timestamp"}
ISO_UTC = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)\Z")


@pytest.fixture
def seed_user(make_user):
    return make_user("user-123")


@pytest.fixture
def console(seed_user, api_key, live_console) -> httpx.Client:
    """The seed user's client, with a console API key: the seeds' "sk-your-api-key"."""
    with httpx.Client(
        base_url=live_console,
        timeout=60,
        headers={"Authorization": f"Bearer {api_key(seed_user)}"},
    ) as client:
        yield client


def _spawned(console: httpx.Client, **changes) -> dict:
    """The seed's spawn with ``changes``; a change to None leaves that field out."""
    body = {k: v for k, v in (SEED_SPAWN | changes).items() if v is not None}
    response = console.post("/v1/agents/spawn", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "details"} <= set(body["error"]), body
    return body["error"]


# --- 000: Hypercore's agent manager ---------------------------------------------------------


def test_seed_spawn_with_its_placeholder_key_is_refused_naming_the_field(console):
    response = console.post("/v1/agents/spawn", json=SEED_SPAWN)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "invalid_request"
    assert "anthropic_api_key" in error["details"]
    assert error["message"].startswith("The request is not valid: anthropic_api_key: ")
    assert "sk-ant-api03-..." in error["message"]  # the placeholder is named, as the reason
    assert not Agent.objects.exists()


def test_seed_spawn_answers_every_documented_field(console):
    spawned = _spawned(console, anthropic_api_key=USERS_KEY)
    assert set(spawned) >= SPAWN_FIELDS, spawned
    assert (spawned["user_id"], spawned["cores"], spawned["memory"]) == ("user-123", 4, 8192)
    assert spawned["status"] in {"pending", "starting", "running"}  # answered before the boot
    assert spawned["metrics_url"] == spawned["url"] + "/metrics"
    assert ISO_UTC.match(spawned["created_at"]), spawned["created_at"]
    assert USERS_KEY not in str(spawned)


def test_seed_chat_answers_every_documented_field(console, fake_anthropic):
    spawned = _spawned(console, anthropic_api_key=USERS_KEY)
    response = console.post(f"{spawned['url']}/v1/agent/chat", json=SEED_CHAT)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert set(reply) >= CHAT_FIELDS, reply
    assert set(reply["usage"]) >= USAGE_FIELDS, reply
    assert reply["content"] == "Echo: Explain quantum computing"
    assert reply["status"] == "completed"
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert fake_anthropic.requests[-1].api_key == USERS_KEY
    assert fake_anthropic.requests[-1].body["max_tokens"] == 4096


def test_seed_chat_with_a_key_anthropic_refuses_names_the_key(console, fake_anthropic):
    fake_anthropic.required_api_key = PLATFORM_KEY  # the user's own key is refused upstream
    spawned = _spawned(console, anthropic_api_key=USERS_KEY)
    response = console.post(f"{spawned['url']}/v1/agent/chat", json=SEED_CHAT)
    error = _error(response)
    assert response.status_code == 502, response.text
    assert error["code"] == "anthropic_key_rejected"
    assert error["message"].startswith(
        "Anthropic refused this agent's own key, anthropic_api_key (given at spawn): "
        "invalid x-api-key. Spawn the agent again with a valid key"
    ), error["message"]
    assert error["details"]["key"] == "anthropic_api_key"
    assert USERS_KEY not in response.text
    assert not Session.objects.filter(closed_at__isnull=True).exists()


def test_chat_when_anthropic_refuses_the_consoles_key_names_that_key(console, fake_anthropic):
    fake_anthropic.required_api_key = "sk-ant-api03-another-key"
    spawned = _spawned(console, anthropic_api_key=None)  # no key of its own: the console's
    response = console.post(f"{spawned['url']}/v1/agent/chat", json=SEED_CHAT)
    error = _error(response)
    assert (response.status_code, error["code"]) == (502, "anthropic_key_rejected")
    assert error["message"].startswith(
        "Anthropic refused the console's key, ANTHROPIC_API_KEY: invalid x-api-key. "
        "An operator must set a valid one."
    ), error["message"]
    assert PLATFORM_KEY not in response.text


def _closed_port() -> int:
    with socket.socket() as closed:  # nothing listens on it once closed
        closed.bind(("127.0.0.1", 0))
        return closed.getsockname()[1]


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("http://api.anthropic.invalid", "the name api.anthropic.invalid did not resolve"),
        ("http://127.0.0.1:{port}", "no connection to 127.0.0.1: Connect call failed"),
    ],
    ids=["dns", "refused"],
)
def test_seed_chat_with_anthropic_unreachable_is_a_clear_error(console, settings, base_url, reason):
    settings.ANTHROPIC_BASE_URL = base_url.format(port=_closed_port())
    spawned = _spawned(console, anthropic_api_key=USERS_KEY)
    response = console.post(f"{spawned['url']}/v1/agent/chat", json=SEED_CHAT)
    error = _error(response)
    assert (response.status_code, error["code"]) == (502, "anthropic_unreachable"), error
    assert error["message"].startswith(f"Anthropic could not be reached: {reason}"), error
    assert "ConnectionKey" not in response.text and "Error(" not in response.text
    assert not Session.objects.filter(closed_at__isnull=True).exists()


def test_seed_list_shows_the_users_agents(console):
    spawned = _spawned(console, anthropic_api_key=USERS_KEY)
    response = console.get("/v1/agents/list?user_id=user-123")
    assert response.status_code == 200, response.text
    listed = response.json()["agents"]
    assert [agent["agent_id"] for agent in listed] == [spawned["agent_id"]]
    assert set(listed[0]) >= SPAWN_FIELDS, listed[0]


def test_seed_delete_deletes_the_agent(console):
    spawned = _spawned(console, anthropic_api_key=USERS_KEY)
    response = console.delete(f"/v1/agents/delete?agent_id={spawned['agent_id']}")
    assert response.status_code == 200, response.text
    assert response.json()["agent_id"] == spawned["agent_id"]
    assert Agent.objects.get(pk=spawned["agent_id"]).deleted_at is not None


# --- 003: the AI Agents Platform ------------------------------------------------------------


def test_platform_execute_answers_every_documented_field(console):
    _spawned(console, anthropic_api_key=USERS_KEY)  # the platform's agent, deployed
    response = console.post(
        "/api/v1/execute",
        json={
            "task_description": "Draft a business plan",
            "context": {"key": "value", "another_key": "another_value"},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= EXECUTE_FIELDS, body
    assert set(body["metadata"]) >= EXECUTE_METADATA, body
    assert body["result"].startswith("Echo: ")
    assert isinstance(body["metadata"]["tokens_used"], int) and body["metadata"]["tokens_used"] > 0
    assert isinstance(body["processing_time_ms"], float)
    assert ISO_UTC.match(body["metadata"]["timestamp"]), body


def test_platform_execute_without_a_task_is_refused_in_the_documented_shape(console):
    response = console.post("/api/v1/execute", json={"context": {"key": "value"}})
    assert response.status_code == 400
    error = _error(response)
    assert "task_description" in error["details"]
    assert "task_description" in error["message"]


def test_platform_health_answers_every_documented_field(console):
    spawned = _spawned(console, anthropic_api_key=USERS_KEY)
    response = console.get(f"{spawned['url']}/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= HEALTH_FIELDS, body
    assert body["agent_id"] == spawned["agent_id"]
    assert body["version"]
    assert ISO_UTC.match(body["timestamp"]), body


def test_platform_metrics_are_prometheus_text(console):
    spawned = _spawned(console, anthropic_api_key=USERS_KEY)
    console.post(f"{spawned['url']}/v1/agent/chat", json=SEED_CHAT).raise_for_status()
    response = console.get(spawned["metrics_url"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE agent_requests_total counter" in response.text


def test_platform_rate_limit_headers_and_429_body(console, seed_user):
    Quota.objects.update_or_create(user=seed_user, defaults={"requests_per_minute": 2})
    for remaining in (1, 0):
        response = console.get("/v1/agents/list")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "2"
        assert response.headers["X-RateLimit-Remaining"] == str(remaining)
        assert response.headers["X-RateLimit-Reset"].isdigit()
    # Refused alike on DRF's routes and on the plain async views (execute, chat).
    for method, path in (("GET", "/v1/agents/list"), ("POST", "/api/v1/execute")):
        response = console.request(method, path, json={"task_description": "hi"})
        assert response.status_code == 429
        error = _error(response)
        retry_after = int(response.headers["Retry-After"])
        assert error["retry_after"] == error["details"]["retry_after"] == retry_after
        assert 1 <= retry_after <= 60


def test_the_default_rate_limit_is_the_platforms_100_a_minute(seed_user):
    assert Quota.objects.create(user=seed_user).requests_per_minute == 100
