"""Schemathesis against the live ASGI app: no operation answers a 5xx or breaks its schema.

Every operation in /api/schema/ is fuzzed with valid (positive) and invalid (negative) requests,
a bounded number of each, as a user who owns a running agent whose runtime is down. The gateway
is fuzzed too, against the fake Anthropic.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from agents.models import Agent
from console.models import Quota

MAX_EXAMPLES = 25  # per operation and generation mode


_RUNTIME_ROUTES = (
    "/agents/",
    "/api/v1/execute",
    "/api/v1/sessions/{session_id}/messages",
    "/api/v1/agents/{agent_id}/files",
    "/api/v1/agents/{agent_id}/exec",
)


def _documented_outage(case: Any, response: Any) -> bool:
    """A 502 from a route that calls an agent's runtime, when that runtime is unreachable (the
    caller's agent here), as the schema documents."""
    if response.status_code != 502 or not case.operation.path.startswith(_RUNTIME_ROUTES):
        return False
    return response.json().get("error", {}).get("code") == "agent_unavailable"


def _fuzz(operation: Any, strategy: Any, base_url: str, headers: dict[str, str]) -> list[str]:
    problems: list[str] = []

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=15)
        checks = [response_schema_conformance]
        if not _documented_outage(case, response):
            checks.append(not_a_server_error)
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (Failure, FailureGroup) as exc:
            # Collected rather than raised: Hypothesis would spend the time budget shrinking.
            problems.append(f"{operation.label}: {exc}\n  reproduce: {case.as_curl_command()}")

    run()
    return problems


@pytest.mark.timeout(600)  # a guard against a hang, not a bound on speed
@pytest.mark.django_db(transaction=True)
def test_no_operation_answers_a_server_error_or_breaks_its_schema(
    asgi_server, user, api_key, fake_anthropic, settings
):
    # Agents the fuzzer spawns boot for real, and reach the gateway of the live app.
    settings.CONSOLE_BASE_URL = asgi_server
    settings.GATEWAY_URL = f"{asgi_server}/gateway"
    # Fuzzing sends hundreds of requests a minute: the user's request rate must not hide them.
    Quota.objects.update_or_create(
        user=user,
        defaults={"requests_per_minute": None, "tokens_per_minute": None, "max_agents": 3},
    )
    agent = Agent.objects.create(
        owner=user, model="m", sandbox_id="s", status="running", endpoint="http://127.0.0.1:9"
    )
    headers = {"Authorization": f"Bearer {api_key(user)}"}
    raw = httpx.get(f"{asgi_server}/api/schema/?format=json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(raw)

    problems: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            if "{agent_id}" in operation.path:
                # Half the cases reach the caller's own agent; the rest name unknown ones.
                own = operation.as_strategy(
                    generation_mode=mode, path_parameters={"agent_id": str(agent.pk)}
                )
                strategy = st.one_of(own, strategy)
            problems += _fuzz(operation, strategy, asgi_server, headers)

    assert not problems, "\n\n".join(problems)
