"""HTTP's own rules on the gateway (its own ASGI app) and the Kubernetes probe names, over a
real socket; the other routes' are in test_protocol.py."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gateway(asgi_server) -> httpx.Client:
    with httpx.Client(base_url=f"{asgi_server}/gateway/v1", timeout=10) as client:
        yield client


def test_the_gateways_401_405_and_malformed_body(gateway, user, api_key):
    call = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    refused = gateway.post("/messages", json=call)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="api"'

    wrong = gateway.get("/messages")
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "POST"

    headers = {"x-api-key": api_key(user), "content-type": "application/json"}
    malformed = gateway.post("/messages", content=b'{"model": ', headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_body"


def test_kubernetes_probe_names_answer(asgi_server):
    for path, status in (("/healthz", 200), ("/livez", 200), ("/readyz", None)):
        response = httpx.get(f"{asgi_server}{path}", timeout=10)
        assert response.status_code in ((status,) if status else (200, 503)), path
        assert response.json()["status"] in ("ok", "unavailable")
