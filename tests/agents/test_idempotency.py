"""``Idempotency-Key`` on spawn and on a chat turn: a retry gets the first answer, once."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from agents.models import Agent, Message
from config.celery import app
from console.models import IdempotentRequest, Quota
from console.services import quota_get
from console.tasks import idempotent_requests_expire_task

SPAWN = "/v1/agents/spawn"
BODY = {"user_id": "alice", "cores": 1, "memory": 256}


def _spawn(client, key: str | None, body: dict = BODY):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(SPAWN, body, format="json", headers=headers)


@pytest.mark.django_db
def test_a_retried_spawn_with_the_same_key_returns_the_first_agent(user, client_for):
    client = client_for(user)
    first = _spawn(client, "spawn-1")
    again = _spawn(client, "spawn-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Agent.objects.count() == 1


@pytest.mark.django_db
def test_without_a_key_or_with_a_new_key_each_spawn_creates(user, client_for):
    client = client_for(user)
    _spawn(client, None)
    _spawn(client, None)
    _spawn(client, "a")
    _spawn(client, "b")
    assert Agent.objects.count() == 4


@pytest.mark.django_db
def test_the_same_key_on_a_different_request_is_a_conflict(user, client_for):
    client = client_for(user)
    _spawn(client, "k")
    response = _spawn(client, "k", BODY | {"cores": 2})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert Agent.objects.count() == 1


@pytest.mark.django_db
def test_a_key_still_running_is_a_conflict_with_retry_after(user, client_for):
    client = client_for(user)
    _spawn(client, "busy")
    IdempotentRequest.objects.filter(key="busy").update(status_code=None)  # as while it runs
    response = _spawn(client, "busy")
    assert response.status_code == 409
    assert response["Retry-After"] == "1"
    assert "still running" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_a_refused_spawn_leaves_the_key_free(user, client_for):
    quota = quota_get(user=user)
    Quota.objects.filter(pk=quota.pk).update(max_agents=0)
    client = client_for(user)
    assert _spawn(client, "retry-me").status_code == 429
    Quota.objects.filter(pk=quota.pk).update(max_agents=5)
    assert _spawn(client, "retry-me").status_code == 201


@pytest.mark.django_db
def test_keys_belong_to_their_user(user, outsider, client_for):
    _spawn(client_for(user), "shared")
    response = _spawn(client_for(outsider), "shared", BODY | {"user_id": outsider.username})
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert Agent.objects.count() == 2


@pytest.mark.django_db
def test_an_overlong_key_is_refused(user, client_for):
    response = _spawn(client_for(user), "k" * 256)
    assert response.status_code == 400


@pytest.mark.django_db(transaction=True)
def test_a_retried_chat_turn_is_answered_once(asgi_server, settings, user, api_key, fake_anthropic):
    settings.CONSOLE_BASE_URL = asgi_server
    settings.GATEWAY_URL = f"{asgi_server}/gateway"
    headers = {"Authorization": f"Bearer {api_key(user)}"}
    with httpx.Client(base_url=asgi_server, headers=headers, timeout=30) as http:
        spawned = http.post(SPAWN, json=BODY)
        assert spawned.status_code == 201, spawned.text
        chat = f"/agents/{spawned.json()['agent_id']}/v1/agent/chat"
        turn = {"prompt": "Hello once", "user_id": "alice"}
        first = http.post(chat, json=turn, headers={"Idempotency-Key": "turn-1"})
        again = http.post(chat, json=turn, headers={"Idempotency-Key": "turn-1"})
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(fake_anthropic.requests) == 1
    assert Message.objects.filter(role="user").count() == 1


@pytest.mark.django_db
def test_beat_forgets_keys_past_their_time(user, client_for, settings):
    _spawn(client_for(user), "old")
    _spawn(client_for(user), "new")
    IdempotentRequest.objects.filter(key="old").update(
        created_at=timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS, minutes=1)
    )
    assert app.conf.beat_schedule["expire-idempotency-keys"]["schedule"] == 3600.0
    assert idempotent_requests_expire_task.apply().result == 1
    assert list(IdempotentRequest.objects.values_list("key", flat=True)) == ["new"]
