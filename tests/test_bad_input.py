"""Bad input anywhere on the thin path gets the error shape and a 4xx, never a 500."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from django.test import Client

from agents.models import Agent

pytestmark = pytest.mark.django_db

BODIES = [
    b"",
    b"{",
    b"null",
    b"42",
    b'"text"',
    b"[]",
    b"[1, 2]",
    b'{"a": {"b": [null]}}',
    b'{"prompt": null}',
    b'{"prompt": "\\u0000"}',
    b'{"prompt": 123, "max_tokens": 1e400}',
    b'{"cores": 1e400, "memory": "lots", "user_id": ["x"], "max_concurrent": true}',
    b'{"model": 1, "max_tokens": -1, "messages": "hi"}',
    b'{"model": "m", "max_tokens": 10000000000000000000, "messages": [{"role": "user"}]}',
    b'{"messages": [1, "two", null]}',
    '{"system_prompt": "é中😀", "cores": 99999}'.encode(),
    b"\xff\xfe not utf-8",
]
QUERIES = [
    "",
    "?agent_id=",
    "?agent_id=%00",
    "?agent_id=" + "9" * 500,
    "?user_id=%00",
    "?user_id=" + "x" * 1000,
    f"?agent_id={uuid.uuid4()}",
]


def _assert_refusal_shape(response, where: str) -> None:
    assert response.status_code < 500, f"{where}: {response.status_code} {response.content[:300]}"
    if response.status_code >= 400 and response.headers["Content-Type"].startswith(
        "application/json"
    ):
        error = json.loads(response.content)["error"]
        assert {"code", "message", "details"} <= set(error), where


@pytest.fixture(params=["user", "operator"])
def caller(request, user, operator, api_key) -> Client:
    owner = user if request.param == "user" else operator
    return Client(headers={"Authorization": f"Bearer {api_key(owner)}"})


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_no_body_breaks_a_post_route(caller, user, content_type):
    agent = Agent.objects.create(
        owner=user, model="m", sandbox_id="s", status="running", endpoint="http://127.0.0.1:9"
    )
    for route in ("/v1/agents/spawn", f"/agents/{agent.pk}/v1/agent/chat"):
        for body in BODIES:
            response = caller.post(route, body, content_type=content_type)
            _assert_refusal_shape(response, f"POST {route} {body[:40]!r}")


def test_no_query_breaks_a_get_or_delete_route(caller):
    for route, method in (
        ("/v1/agents/get", "get"),
        ("/v1/agents/list", "get"),
        ("/v1/agents/delete", "delete"),
        ("/v1/agents/stats", "get"),
    ):
        for query in QUERIES:
            response = getattr(caller, method)(route + query)
            _assert_refusal_shape(response, f"{method.upper()} {route}{query}")


def test_wrong_methods_are_refused_in_the_error_shape(caller):
    for route, method in (
        ("/v1/agents/spawn", "get"),
        ("/v1/agents/list", "post"),
        ("/v1/agents/delete", "get"),
    ):
        response = getattr(caller, method)(route)
        assert response.status_code in (400, 405), route
        _assert_refusal_shape(response, route)


# The gateway is an ASGI app of its own (gateway/app.py): it is tried over HTTP.


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_no_body_breaks_the_gateway(asgi_server, user, api_key, fake_anthropic, content_type):
    headers = {"x-api-key": api_key(user), "content-type": content_type}
    with httpx.Client(base_url=asgi_server, headers=headers, timeout=10) as http:
        for body in BODIES:
            response = http.post("/gateway/v1/messages", content=body)
            _assert_refusal_shape(response, f"POST /gateway/v1/messages {body[:40]!r}")
            assert response.status_code == 400


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_the_gateway_refuses_other_methods_in_the_error_shape(asgi_server, user, api_key, method):
    response = httpx.request(
        method, f"{asgi_server}/gateway/v1/messages", headers={"x-api-key": api_key(user)}
    )
    assert response.status_code == 405
    _assert_refusal_shape(response, f"{method} /gateway/v1/messages")
