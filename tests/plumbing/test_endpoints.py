"""Console-wide endpoints: liveness, readiness, Prometheus metrics and the 404 pages."""

from __future__ import annotations

import uuid

import httpx
import pytest

from agents.models import Agent

pytestmark = pytest.mark.django_db

METRICS_TOKEN = "metrics-scraper-token"


def _agent(owner, status: str, **fields) -> Agent:
    return Agent.objects.create(
        owner=owner,
        model="claude-sonnet-4-5",
        sandbox_id=str(uuid.uuid4()),
        status=status,
        **fields,
    )


def test_health_answers_ok(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_checks_the_database(client, settings):
    response = client.get("/ready")
    assert response.status_code == 200
    checks = {"database": "ok", "broker": "ok", "channel_layer": "ok"}
    if settings.REDIS_URL:
        checks["redis"] = "ok"
    assert response.json() == {"status": "ok", "checks": checks}


def test_metrics_are_prometheus_text_with_the_active_agent_gauge(client, user, settings):
    settings.METRICS_BEARER_TOKEN = ""
    _agent(user, "running")
    _agent(user, "running")
    _agent(user, "pending")
    _agent(user, "stopped")
    _agent(user, "running", deleted_at="2025-11-01T00:00:00Z")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    lines = response.content.decode().splitlines()
    assert "# TYPE hypercore_agent_active_count gauge" in lines
    assert 'hypercore_agent_active_count{status="running"} 2.0' in lines
    assert 'hypercore_agent_active_count{status="pending"} 1.0' in lines
    assert 'hypercore_agent_active_count{status="starting"} 0.0' in lines
    assert not any('status="stopped"' in line for line in lines)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", METRICS_TOKEN])
def test_metrics_without_the_bearer_token_are_refused(client, settings, authorization):
    settings.METRICS_BEARER_TOKEN = METRICS_TOKEN
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_metrics_with_the_bearer_token_are_served(client, settings):
    settings.METRICS_BEARER_TOKEN = METRICS_TOKEN
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    assert b"hypercore_agent_active_count" in response.content


@pytest.mark.parametrize("path", ["/v1/nope", "/api/nope", "/gateway/v2/nope"])
def test_an_unknown_api_path_is_a_json_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": {"code": "not_found", "message": "no such route", "details": {"path": path}}
    }


def test_an_unknown_page_is_the_html_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert "404.html" in [t.name for t in response.templates]
    assert b"There is nothing at this address." in response.content


@pytest.mark.django_db(transaction=True)
def test_a_body_over_the_size_limit_is_refused_with_413(asgi_server, settings, user, api_key):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = httpx.post(
        f"{asgi_server}/gateway/v1/messages",
        content=b"x" * 4096,
        headers={"x-api-key": api_key(user), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert response.json()["error"]["type"] == "request_too_large"


def test_favicon_ico_leads_to_the_console_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"].endswith("console/favicon.svg")
    assert client.get(response["Location"]).status_code == 200
