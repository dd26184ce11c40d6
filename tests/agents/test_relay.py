"""The agent relay, for real: ``manage.py sandbox_relay`` in its own process in front of a
sandboxed runtime, the console dialling the agent's relay endpoint with signed requests.

The relay serves the host ``relay-host``, whose sandboxes are the test's own (the same state
folder): the agent is placed there, booted by the Celery task run eagerly, and recorded with
the relay's endpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from agents import sandbox
from agents.models import Agent, SandboxHost, ServingProcess, Session
from agents.sandbox import runtime_client_sync
from agents.services import agent_log_tail, host_register
from tests.agents.workers import RELAY_KEY, Relay, start_relay
from tests.fakes.anthropic import Hang, Text
from tests.polling import eventually
from wire import relaytoken

pytestmark = pytest.mark.django_db(transaction=True)

RELAY_HOST = "relay-host"


@pytest.fixture
def relay(settings, tmp_path, live_console) -> Iterator[Relay]:
    """The relay of ``relay-host``, registered as a worker would register it; the test's own
    host takes no new agents, so spawns are placed on ``relay-host``."""
    relay = start_relay(RELAY_HOST, settings.SANDBOX_STATE_DIR, tmp_path)
    try:
        settings.SANDBOX_RELAY_URL = relay.url
        settings.SANDBOX_RELAY_KEY = RELAY_KEY
        host_register(
            name=RELAY_HOST,
            backend="process",
            capacity_vcpus=64,
            capacity_memory_mib=64 * 1024,
            relay_url=relay.url,
        )
        SandboxHost.objects.filter(name=settings.SANDBOX_HOST_NAME).update(is_draining=True)
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def alice(user, api_key, live_console) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=live_console, timeout=30, headers={"Authorization": f"Bearer {api_key(user)}"}
    ) as client:
        yield client


@pytest.fixture
def agent(relay, alice, fake_anthropic) -> Agent:
    response = alice.post("/v1/agents/spawn", json={"user_id": "alice", "memory": 256})
    assert response.status_code == 201, response.text
    agent = Agent.objects.select_related("host").get(pk=response.json()["agent_id"])
    assert agent.status == "running", agent.last_error
    return agent


def _chat_body(agent: Agent, prompt: str, *, stream: bool) -> dict:
    """A turn as the console sends it, in a session the gateway knows."""
    session = Session.objects.create(agent=agent, user=agent.owner)
    return {"prompt": prompt, "session_id": str(session.pk), "max_tokens": 256, "stream": stream}


def _signed(agent_id: object, method: str, path: str, **fields) -> dict[str, str]:
    token = relaytoken.token_make(
        fields.pop("key", RELAY_KEY),
        agent_id=str(agent_id),
        method=method,
        path=path,
        ttl=fields.pop("ttl", 30),
        **fields,
    )
    return {relaytoken.HEADER: token}


def _sse_events(response: httpx.Response) -> Iterator[tuple[float, str, dict]]:
    """Each event of a stream as it arrives: when, its name and its data."""
    name = ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield time.monotonic(), name, json.loads(line[5:])


def test_the_agents_endpoint_is_its_hosts_relay_and_its_id(agent, relay):
    assert agent.host.name == RELAY_HOST
    assert agent.endpoint == f"{relay.url}/{agent.pk}"


def test_a_chat_turn_passes_through_the_relay_as_json(agent, fake_anthropic):
    with runtime_client_sync(agent.endpoint, timeout=30) as client:
        response = client.post(
            "/v1/agent/chat", json=_chat_body(agent, "Hello relay", stream=False)
        )
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "Echo: Hello relay"


def test_a_streamed_turn_passes_through_the_relay_as_it_is_written(agent, fake_anthropic):
    fake_anthropic.chunk_delay = 0.15
    fake_anthropic.enqueue(Text("one two three four five six"))
    with (
        runtime_client_sync(agent.endpoint, timeout=30) as client,
        client.stream(
            "POST", "/v1/agent/chat", json=_chat_body(agent, "go", stream=True)
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(_sse_events(response))
    deltas = [at for at, name, _ in events if name == "delta"]
    assert events[-1][1] == "done" and events[-1][2]["content"] == "one two three four five six"
    # Unbuffered: the deltas arrive as Claude's chunks do, spread over the chunks' delays.
    assert len(deltas) >= 4
    assert deltas[-1] - deltas[0] >= 0.15 * (len(deltas) - 2)


def test_a_caller_that_goes_away_ends_the_turn_behind_the_relay(agent, fake_anthropic):
    """A stopped turn is a closed connection: the relay closes its own to the runtime at once,
    which ends Claude's call, as when the console dials the runtime itself."""
    fake_anthropic.enqueue(Hang(30))
    with (
        runtime_client_sync(agent.endpoint, timeout=30) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        body = _chat_body(agent, "Take your time", stream=False)
        client.post("/v1/agent/chat", json=body, timeout=httpx.Timeout(30, read=1))
    assert eventually(lambda: fake_anthropic.disconnects == 1, timeout=5)


def test_health_ready_and_metrics_pass_through_the_relay(agent):
    with runtime_client_sync(agent.endpoint, timeout=10) as client:
        health = client.get("/health")
        ready = client.get("/ready")
        metrics = client.get("/metrics")
    assert health.status_code == 200 and health.json()["agent_id"] == str(agent.pk)
    assert ready.status_code == 200
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def test_the_logs_of_an_agent_of_another_host_are_read_through_its_relay(agent, settings):
    assert agent.host.name != settings.SANDBOX_HOST_NAME
    with runtime_client_sync(agent.endpoint, timeout=10) as client:
        client.get("/health").raise_for_status()
    assert eventually(lambda: "/health" in agent_log_tail(agent=agent, lines=50))


def _refusals() -> dict[str, object]:
    other = uuid.uuid4()
    return {
        "no token": lambda agent_id, path: {},
        "a forged token": lambda agent_id, path: _signed(
            agent_id, "GET", path, key="another-deployments-key-0123456789abcdef"
        ),
        "an expired token": lambda agent_id, path: _signed(
            agent_id, "GET", path, now=time.time() - 60
        ),
        "a token for another agent": lambda agent_id, path: _signed(other, "GET", path),
        "a token for another request": lambda agent_id, path: _signed(agent_id, "GET", "/x"),
        "a token that lives too long": lambda agent_id, path: _signed(
            agent_id, "GET", path, ttl=3600
        ),
    }


@pytest.mark.parametrize("case", list(_refusals()))
def test_a_request_without_a_valid_token_is_refused_and_logged(agent, relay, case):
    path = f"/{agent.pk}/health"
    headers = _refusals()[case](agent.pk, path)  # type: ignore[operator]
    response = httpx.get(relay.url + path, headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert set(response.json()["error"]) >= {"code", "message", "details"}
    assert eventually(lambda: f"refused GET {path} from 127.0.0.1" in relay.output())


def test_an_agent_of_another_host_is_not_served(agent, relay, user, settings):
    theirs = Agent.objects.create(
        owner=user,
        model=agent.model,
        status="running",
        host=SandboxHost.objects.get(name=settings.SANDBOX_HOST_NAME),
        sandbox_id=agent.sandbox_id,  # even naming a sandbox that this host runs
    )
    path = f"/{theirs.pk}/health"
    response = httpx.get(relay.url + path, headers=_signed(theirs.pk, "GET", path), timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "agent_not_found"
    assert eventually(
        lambda: (
            f"refused GET {path} from 127.0.0.1: not an agent of host {RELAY_HOST}"
            in relay.output()
        )
    )


def test_an_agent_whose_sandbox_stopped_is_answered_409(agent, relay):
    sandbox.driver().stop(agent.sandbox_id)
    with runtime_client_sync(agent.endpoint, timeout=10) as client:
        response = client.get("/health")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "agent_not_running"


def test_the_console_chats_with_an_agent_through_its_relay(agent, alice, fake_anthropic):
    url = f"/agents/{agent.pk}/v1/agent/chat"
    reply = alice.post(url, json={"prompt": "Hello there", "stream": False})
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"] == "Echo: Hello there"
    with alice.stream("POST", url, json={"prompt": "Stream me", "stream": True}) as response:
        assert response.status_code == 200
        names = [name for _, name, _ in _sse_events(response)]
    assert names[-1] == "done" and "delta" in names
    health = alice.get(f"/agents/{agent.pk}/health")
    assert health.status_code == 200 and health.json()["agent_id"] == str(agent.pk)
    assert alice.get(f"/agents/{agent.pk}/metrics").status_code == 200


def test_workspace_files_and_commands_pass_through_the_relay(agent, alice):
    """PUT and DELETE pass, and an upload larger than the relay reads whole streams through."""
    files = f"/api/v1/agents/{agent.pk}/files"
    big = os.urandom(6 * 1024 * 1024)  # past the 4 MiB a relay reads whole
    written = alice.put(f"{files}/data/big.bin", content=big, timeout=60)
    assert written.status_code == 201, written.text
    assert written.json()["size"] == len(big)
    assert alice.get(f"{files}/data/big.bin", timeout=60).content == big
    ran = alice.post(
        f"/api/v1/agents/{agent.pk}/exec", json={"argv": ["sha256sum", "data/big.bin"]}
    ).json()
    assert ran["exit_code"] == 0 and ran["stdout"].startswith(hashlib.sha256(big).hexdigest())
    deleted = alice.delete(f"{files}/data", params={"recursive": "true"})
    assert deleted.status_code == 200, deleted.text
    assert alice.get(files).json()["entries"] == []
    refused = alice.get(f"{files}/..%2f..%2fetc%2fpasswd")
    assert refused.status_code == 400


METRICS_TOKEN = "a-metrics-token-for-the-relay-0123"
_SPAWNS = """
from prometheus_client import Counter
Counter("hypercore_agent_spawn", "Agent boots, by outcome.", ["status"]).labels("success").inc(3)
"""


@pytest.fixture
def metered_relay(settings, tmp_path) -> Iterator[Relay]:
    """A relay whose machine's processes write their metrics to one folder, that says it is
    alive every 0.2 s and serves ``/metrics`` to ``METRICS_TOKEN``."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "METRICS_BEARER_TOKEN": METRICS_TOKEN,
        "PROCESS_HEARTBEAT_SECONDS": "0.2",
    }
    # Another process of the machine (its worker, say) counts three boots there.
    subprocess.run([sys.executable, "-c", _SPAWNS], env=os.environ | env, check=True)
    relay = start_relay(RELAY_HOST, settings.SANDBOX_STATE_DIR, tmp_path, env=env)
    yield relay
    relay.stop()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-the-token"}, {"Authorization": METRICS_TOKEN}],
    ids=["none", "another token", "no scheme"],
)
def test_the_relays_metrics_are_refused_without_the_metrics_token(metered_relay, headers):
    response = httpx.get(f"{metered_relay.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert "# TYPE" not in response.text
    assert eventually(lambda: "refused GET /metrics" in metered_relay.output())


def test_the_relay_serves_its_machines_metrics_and_says_it_is_alive(metered_relay):
    response = httpx.get(
        f"{metered_relay.url}/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert 'hypercore_agent_spawn_total{status="success"} 3.0' in response.text

    def registered() -> ServingProcess | None:
        return ServingProcess.objects.filter(machine=RELAY_HOST, kind="relay").first()

    process = eventually(registered, 30, every=0.1)
    assert process.pid == metered_relay.proc.pid
    assert process.metrics_url == f"{metered_relay.url}/metrics"
    first = process.seen_at
    assert eventually(lambda: registered().seen_at > first, 10, every=0.1)


def test_a_relay_without_a_metrics_token_serves_no_metrics(settings, tmp_path):
    relay = start_relay(RELAY_HOST, settings.SANDBOX_STATE_DIR, tmp_path)
    try:
        response = httpx.get(
            f"{relay.url}/metrics", headers={"Authorization": "Bearer x"}, timeout=10
        )
    finally:
        relay.stop()
    assert response.status_code == 401
