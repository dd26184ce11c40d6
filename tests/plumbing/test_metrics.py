"""The console's /metrics: every metric of Hypercore's list, with exactly its name and labels,
plus cost and budgets; request routes as bounded labels; error codes as a bounded label."""

from __future__ import annotations

import uuid
from decimal import Decimal

import anthropic
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from agents.models import Agent, Session
from console.models import Budget
from gateway.metrics import USER_LABELS
from plumbing.metrics import error_count
from plumbing.middleware import endpoint_label

pytestmark = pytest.mark.django_db(transaction=True)

# Hypercore's names (as scraped: counters end in _total) and the labels of their samples.
HYPERCORE = {
    "agent_active_sessions": set(),
    "agent_requests_total": {"endpoint", "status"},
    "agent_request_duration_seconds_bucket": {"endpoint", "le"},
    "agent_request_duration_seconds_count": {"endpoint"},
    "agent_token_usage_total": {"type"},
    "agent_errors_total": {"error_type"},
    "hypercore_agent_spawn_total": {"status"},
    "hypercore_agent_active_count": {"status"},
    "hypercore_agent_spawn_duration_seconds_bucket": {"le"},
    "hypercore_agent_spawn_duration_seconds_count": set(),
    "console_gateway_cost_usd_total": {"model"},
    "console_gateway_user_cost_usd_total": {"user"},
    "console_budget_remaining": {"user", "budget", "metric", "window"},
    "console_budget_limit": {"user", "budget", "metric", "window"},
    "console_sandbox_capacity": {"resource"},
    "console_sandbox_used": {"resource"},
}


@pytest.fixture(autouse=True)
def _metrics(settings) -> None:
    settings.METRICS_BEARER_TOKEN = ""
    USER_LABELS.clear()


def samples(base_url: str) -> list:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def test_every_hypercore_metric_is_exported_with_its_labels(
    asgi_server, fake_anthropic, user, api_key
):
    from agents.metrics import SPAWN_DURATION, SPAWN_TOTAL

    key = api_key(user)
    agent = Agent.objects.create(
        owner=user, model="claude-sonnet-5-5", sandbox_id=str(uuid.uuid4()), status="running"
    )
    Session.objects.create(agent=agent, user=user)
    Session.objects.create(agent=agent, user=user, closed_at="2025-11-01T00:00:00Z")
    Budget.objects.create(user=user, metric="usd", window="day", limit=Decimal(5))
    SPAWN_TOTAL.labels("success").inc(0)  # a boot happens in the worker; its series, here
    SPAWN_DURATION.observe(0.2)
    sdk = anthropic.Anthropic(base_url=f"{asgi_server}/gateway", api_key=key, max_retries=0)
    sdk.messages.create(
        model="claude-sonnet-5-5", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    )
    auth = {"Authorization": f"Bearer {key}"}
    # Counters live as long as the test process: earlier tests' requests are in them.
    counted = [("/api/v1/agents", "200"), ("/api/v1/agents/<pk>", "404")]
    before = {
        route: REGISTRY.get_sample_value(
            "agent_requests_total", {"endpoint": route[0], "status": route[1]}
        )
        or 0
        for route in counted
    }
    assert httpx.get(f"{asgi_server}/api/v1/agents", headers=auth).status_code == 200
    missing = uuid.uuid4()
    assert httpx.get(f"{asgi_server}/api/v1/agents/{missing}", headers=auth).status_code == 404

    found = samples(asgi_server)

    for name, labels in HYPERCORE.items():
        label_sets = [set(s.labels) for s in found if s.name == name]
        assert label_sets, f"{name} is not exported"
        assert all(have == labels for have in label_sets), (name, label_sets)
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in found}
    assert value[("agent_active_sessions", ())] == 1
    assert value[("hypercore_agent_active_count", (("status", "running"),))] == 1
    # The test machine's host (64 vCPUs), taking agents; the agent has no host, so holds none.
    assert value[("console_sandbox_capacity", (("resource", "vcpus"),))] == 64
    assert value[("console_sandbox_used", (("resource", "vcpus"),))] == 0
    tokens = {s.labels["type"]: s.value for s in found if s.name == "agent_token_usage_total"}
    assert set(tokens) == {"input", "output", "cache_read", "cache_creation"}
    assert tokens["input"] > 0 and tokens["output"] > 0
    requests = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for s in found
        if s.name == "agent_requests_total"
    }
    for route in counted:
        assert requests[route] - before[route] == 1, route
    assert not any(str(missing) in endpoint for endpoint, _ in requests)  # never a raw path
    errors = {s.labels["error_type"]: s.value for s in found if s.name == "agent_errors_total"}
    assert errors["not_found"] >= 1


def test_a_path_no_route_matches_counts_as_unmatched(client, settings):
    path = f"/api/nope/{uuid.uuid4()}"
    assert client.get(path).status_code == 404

    text = client.get("/metrics").content.decode()

    assert 'agent_requests_total{endpoint="unmatched",status="404"}' in text
    assert path not in text


@pytest.mark.parametrize(
    ("route", "label"),
    [
        ("api/v1/agents/(?P<pk>[0-9a-fA-F-]{36})/stop$", "/api/v1/agents/<pk>/stop"),
        ("^v1/agents/list$", "/v1/agents/list"),
        ("agents/<uuid:agent_id>/v1/agent/chat", "/agents/<agent_id>/v1/agent/chat"),
        ("health", "/health"),
    ],
)
def test_a_route_pattern_becomes_a_readable_endpoint_label(route, label):
    assert endpoint_label(route) == label


def test_an_error_code_the_console_does_not_know_counts_as_other(client):
    error_count("made_up_by_a_runtime_" + uuid.uuid4().hex)
    error_count("agent_not_running")

    text = client.get("/metrics").content.decode()

    assert 'agent_errors_total{error_type="other"}' in text
    assert 'agent_errors_total{error_type="agent_not_running"}' in text
    assert "made_up_by_a_runtime" not in text
