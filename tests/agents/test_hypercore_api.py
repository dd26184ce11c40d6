"""The Hypercore-compatible routes: validation, quotas, and isolation between users."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents.models import Agent
from console.models import Quota

pytestmark = pytest.mark.django_db

SPAWN = "/v1/agents/spawn"


def _operator_client(scoped_client, operator):
    """An operator's client: a staff user's key with the admin scope (without it, a staff
    user's key is a user's key)."""
    return scoped_client(operator, "read", "write", "admin")


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def _agent(owner, **fields) -> Agent:
    return Agent.objects.create(
        owner=owner, model="claude-sonnet-5-5", sandbox_id=str(uuid.uuid4()), **fields
    )


def test_spawn_records_a_pending_agent_and_answers_in_hypercore_shape(
    user, client_for, django_capture_on_commit_callbacks, settings
):
    settings.CONSOLE_BASE_URL = "http://console.test"
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(user).post(
            SPAWN,
            {
                "user_id": "alice",
                "cores": 2,
                "memory": 1024,
                "max_concurrent": 7,
                "system_prompt": "Be brief.",
                "anthropic_api_key": "sk-ant-api03-user-own-key-0123456789abcdefABCDEF",
            },
            format="json",
        )
    assert response.status_code == 201, response.content
    body = response.json()
    agent = Agent.objects.get(pk=body["agent_id"])
    assert body["url"] == f"http://console.test/agents/{agent.pk}"
    assert body["metrics_url"] == f"http://console.test/agents/{agent.pk}/metrics"
    assert (body["status"], body["user_id"], body["cores"], body["memory"]) == (
        "pending",
        "alice",
        2,
        1024,
    )
    assert body["created_at"]
    assert (agent.max_concurrent_sessions, agent.system_prompt) == (7, "Be brief.")
    assert "sk-ant-api03-user-own-key-0123456789abcdefABCDEF" not in response.content.decode()
    assert "sk-ant-api03-user-own-key-0123456789abcdefABCDEF" not in agent.anthropic_key_encrypted
    assert len(callbacks) == 1  # the boot is queued only after the row is committed


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"cores": "four"}, "cores"),
        ({"cores": 0}, "cores"),
        ({"memory": 10}, "memory"),
        ({"max_concurrent": -1}, "max_concurrent"),
        ({"system_prompt": 12, "cores": []}, "cores"),
    ],
)
def test_spawn_with_wrong_types_is_refused_with_field_errors(user, client_for, payload, field):
    response = client_for(user).post(SPAWN, payload, format="json")
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "invalid_request"
    assert field in error["details"]
    assert not Agent.objects.exists()


def test_spawn_with_a_body_that_is_not_json_is_refused(user, client_for):
    response = client_for(user).post(SPAWN, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert _error(response)["code"] == "malformed_body"


def test_spawn_with_a_json_list_is_refused(user, client_for):
    response = client_for(user).post(SPAWN, [1, 2], format="json")
    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_request"


def test_spawn_without_credentials_is_refused(client):
    response = client.post(SPAWN, {}, content_type="application/json")
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"


def test_spawn_over_quota_is_refused(user, client_for):
    Quota.objects.create(user=user, max_agents=1)
    client = client_for(user)
    assert client.post(SPAWN, {}, format="json").status_code == 201
    response = client.post(SPAWN, {}, format="json")
    assert response.status_code == 429
    error = _error(response)
    assert error["code"] == "quota_exceeded"
    assert error["details"] == {"limit": "max_agents", "value": 1, "used": 1, "requested": 1}
    assert Agent.objects.count() == 1


def test_spawn_over_the_vcpu_quota_is_refused(user, client_for):
    Quota.objects.create(user=user, max_total_vcpus=4)
    response = client_for(user).post(SPAWN, {"cores": 5}, format="json")
    assert response.status_code == 429
    assert _error(response)["details"]["limit"] == "max_total_vcpus"


def test_spawning_for_another_user_is_refused_unless_operator(
    user, outsider, operator, client_for, scoped_client
):
    response = client_for(outsider).post(SPAWN, {"user_id": "alice"}, format="json")
    assert response.status_code == 403
    assert _error(response)["code"] == "forbidden"
    response = _operator_client(scoped_client, operator).post(
        SPAWN, {"user_id": "alice"}, format="json"
    )
    assert response.status_code == 201
    assert Agent.objects.get().owner == user


def test_list_shows_only_your_own_agents(user, outsider, client_for):
    mine, theirs = _agent(user), _agent(outsider)
    response = client_for(user).get("/v1/agents/list", {"user_id": "alice"})
    assert response.status_code == 200
    ids = [a["agent_id"] for a in response.json()["agents"]]
    assert ids == [str(mine.pk)]
    assert str(theirs.pk) not in ids
    assert response.json()["count"] == 1


def test_list_of_another_users_agents_is_refused(user, outsider, client_for):
    _agent(user)
    response = client_for(outsider).get("/v1/agents/list", {"user_id": "alice"})
    assert response.status_code == 403


def test_operator_lists_anyones_agents(user, operator, client_for, scoped_client):
    agent = _agent(user)
    response = _operator_client(scoped_client, operator).get(
        "/v1/agents/list", {"user_id": "alice"}
    )
    assert [a["agent_id"] for a in response.json()["agents"]] == [str(agent.pk)]


def test_list_query_count_does_not_grow_with_agents(user, client_for, django_assert_num_queries):
    _agent(user)
    client = client_for(user)
    client.get("/v1/agents/list")  # warms the key's last-used stamp
    with CaptureQueriesContext(connection) as one:
        assert client.get("/v1/agents/list").json()["count"] == 1
    # The API key with its user and quota; the request counted against the user's rate (in
    # the database, one statement in a savepoint, or in Redis with REDIS_URL); then the agents.
    assert len(one.captured_queries) <= 5, one.captured_queries
    for _ in range(29):
        _agent(user)
    with django_assert_num_queries(len(one.captured_queries)):
        response = client.get("/v1/agents/list")
    assert response.json()["count"] == 30


@pytest.mark.parametrize("method", ["get", "delete"])
def test_another_users_agent_does_not_exist_for_you(user, outsider, client_for, method):
    agent = _agent(user)
    client = client_for(outsider)
    route = "/v1/agents/get" if method == "get" else "/v1/agents/delete"
    response = getattr(client, method)(f"{route}?agent_id={agent.pk}")
    assert response.status_code == 404
    assert _error(response)["code"] == "agent_not_found"
    agent.refresh_from_db()
    assert agent.deleted_at is None


def test_another_users_agent_chat_and_metrics_are_not_found(user, outsider, client_for):
    agent = _agent(user, status="running", endpoint="http://127.0.0.1:9")
    client = client_for(outsider)
    chat = client.post(f"/agents/{agent.pk}/v1/agent/chat", {"prompt": "hi"}, format="json")
    assert chat.status_code == 404
    assert _error(chat)["code"] == "agent_not_found"
    metrics = client.get(f"/agents/{agent.pk}/metrics")
    assert metrics.status_code == 404


@pytest.mark.parametrize("query", ["", "?agent_id=", "?agent_id=not-a-uuid"])
def test_get_without_a_valid_agent_id_is_refused(user, client_for, query):
    response = client_for(user).get(f"/v1/agents/get{query}")
    assert response.status_code == 400
    assert "agent_id" in _error(response)["details"]


def test_get_of_an_unknown_agent_is_not_found(user, client_for):
    response = client_for(user).get(f"/v1/agents/get?agent_id={uuid.uuid4()}")
    assert response.status_code == 404


def test_delete_marks_the_agent_deleted_and_tears_it_down_after_commit(
    user, client_for, django_capture_on_commit_callbacks
):
    agent = _agent(user, status="running")
    client = client_for(user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.delete(f"/v1/agents/delete?agent_id={agent.pk}")
    assert response.status_code == 200
    assert response.json()["deleted"] is True
    agent.refresh_from_db()
    assert agent.status == "stopped"
    assert agent.deleted_at is not None
    assert client.get(f"/v1/agents/get?agent_id={agent.pk}").status_code == 404
    assert client.get("/v1/agents/list").json()["count"] == 0


def test_stats_count_your_agents_and_operators_see_all(
    user, outsider, operator, client_for, scoped_client
):
    _agent(user, status="running")
    _agent(user, status="failed")
    _agent(outsider, status="running")
    mine = client_for(user).get("/v1/agents/stats").json()
    assert (mine["scope"], mine["total_agents"], mine["active_agents"]) == ("own", 2, 1)
    assert mine["by_status"]["failed"] == 1
    everyone = _operator_client(scoped_client, operator).get("/v1/agents/stats").json()
    assert (everyone["scope"], everyone["total_agents"]) == ("all", 3)


class TestChatRoute:
    def _chat(self, client, agent_id, body, **kwargs):
        return client.post(f"/agents/{agent_id}/v1/agent/chat", body, **kwargs)

    def test_chat_with_a_stopped_agent_is_a_conflict(self, user, client_for):
        agent = _agent(user, status="stopped")
        response = self._chat(client_for(user), agent.pk, {"prompt": "hi"}, format="json")
        assert response.status_code == 409
        error = _error(response)
        assert error["code"] == "agent_not_running"
        assert error["details"]["status"] == "stopped"

    def test_chat_with_an_agent_still_booting_waits_then_refuses(self, user, client_for, settings):
        settings.AGENT_BOOT_WAIT_SECONDS = 0.2
        agent = _agent(user, status="starting")
        response = self._chat(client_for(user), agent.pk, {"prompt": "hi"}, format="json")
        assert response.status_code == 409

    def test_chat_with_an_unknown_agent_is_not_found(self, user, client_for):
        response = self._chat(client_for(user), uuid.uuid4(), {"prompt": "hi"}, format="json")
        assert response.status_code == 404

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({}, "prompt"),
            ({"prompt": "  "}, "prompt"),
            ({"prompt": "hi", "max_tokens": "x"}, "max_tokens"),
            ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
            ({"prompt": "hi", "session_id": "nope"}, "session_id"),
        ],
    )
    def test_chat_with_bad_fields_is_refused(self, user, client_for, body, field):
        agent = _agent(user, status="running", endpoint="http://127.0.0.1:9")
        response = self._chat(client_for(user), agent.pk, body, format="json")
        assert response.status_code == 400
        assert field in _error(response)["details"]

    def test_chat_with_a_body_that_is_not_json_is_refused(self, user, client_for):
        agent = _agent(user, status="running", endpoint="http://127.0.0.1:9")
        response = self._chat(client_for(user), agent.pk, "nope", content_type="application/json")
        assert response.status_code == 400
        assert _error(response)["code"] == "malformed_body"  # as DRF routes answer it

    def test_chat_as_someone_else_is_refused(self, user, client_for):
        agent = _agent(user, status="running", endpoint="http://127.0.0.1:9")
        response = self._chat(
            client_for(user), agent.pk, {"prompt": "hi", "user_id": "bob"}, format="json"
        )
        assert response.status_code == 403

    def test_chat_without_credentials_is_refused(self, user, client):
        agent = _agent(user, status="running", endpoint="http://127.0.0.1:9")
        response = self._chat(client, agent.pk, {"prompt": "hi"}, content_type="application/json")
        assert response.status_code == 401

    def test_chat_with_an_unreachable_runtime_is_a_bad_gateway(self, user, client_for):
        agent = _agent(user, status="running", endpoint="http://127.0.0.1:9")
        response = self._chat(client_for(user), agent.pk, {"prompt": "hi"}, format="json")
        assert response.status_code == 502
        assert _error(response)["code"] == "agent_unavailable"

    def test_get_on_the_chat_route_is_not_allowed(self, user, client_for):
        agent = _agent(user, status="running")
        response = client_for(user).get(f"/agents/{agent.pk}/v1/agent/chat")
        assert response.status_code == 405
