"""Agents of the ``claude_agent_sdk`` architecture: the Claude Agent SDK's CLI in the process
sandbox, reaching the fake Anthropic only through the console's gateway, billed like any other;
and the spawns that are refused, with their reasons."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator

import httpx
import pytest

from agents import sandbox
from agents.models import Agent, Message
from agents.runtime.agentsdk import transcript
from agents.services import agents_reconcile
from console.models import Quota, UsageRecord
from tests.conftest import PLATFORM_KEY
from tests.fakes.anthropic import Text, ToolUse

pytestmark = pytest.mark.django_db(transaction=True)

SDK = "claude_agent_sdk"
needs_sdk = pytest.mark.skipif(
    sandbox.architecture_problem(SDK) is not None,
    reason=f"{sandbox.architecture_problem(SDK)}",
)


@pytest.fixture
def alice(user, api_key, live_console) -> Iterator[httpx.Client]:
    Quota.objects.update_or_create(user=user, defaults={"requests_per_minute": None})
    headers = {"Authorization": f"Bearer {api_key(user)}"}
    with httpx.Client(base_url=live_console, headers=headers, timeout=90) as http:
        yield http


def _session(http: httpx.Client, agent_id: str) -> str:
    session = http.post("/api/v1/sessions", json={"agent_id": agent_id})
    assert session.status_code == 201, session.text
    return session.json()["session_id"]


@needs_sdk
@pytest.mark.timeout(300)
def test_an_sdk_agent_started_afresh_is_given_its_conversation(alice, fake_anthropic):
    """The CLI's own session dies with its runtime: the next turn's prompt carries the stored
    conversation, the tool's result included."""
    spawned = alice.post("/api/v1/agents", json={"name": "sdk", "architecture": SDK})
    assert spawned.status_code == 201, spawned.text
    agent = Agent.objects.get(pk=spawned.json()["agent_id"])
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    fake_anthropic.enqueue(
        ToolUse("Bash", {"command": "echo ostrich-42"}), Text("It printed the codeword.")
    )
    sid = _session(alice, str(agent.pk))
    first = alice.post(f"/api/v1/sessions/{sid}/messages", json={"content": "Run the echo."})
    assert first.status_code == 200, first.text

    pid = sandbox.driver().status(agent.sandbox_id).pid
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    assert agents_reconcile()["failed"] == 1
    assert alice.post(f"/api/v1/agents/{agent.pk}/start").status_code == 200
    fake_anthropic.reset()
    fake_anthropic.enqueue(Text("The codeword was ostrich-42."))
    second = alice.post(f"/api/v1/sessions/{sid}/messages", json={"content": "What was it?"})

    assert second.status_code == 200, second.text
    [call] = [r.body for r in fake_anthropic.requests if r.path == "/v1/messages"]
    sent = json.dumps(call["messages"])
    assert "Run the echo." in sent and "ostrich-42" in sent and "What was it?" in sent


def test_a_transcript_holds_the_text_tool_calls_and_cut_results():
    history = [
        {"role": "user", "content": "Run it."},
        {"role": "assistant", "content": [{"type": "tool_use", "name": "Bash", "input": {"c": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "content": "x" * 10_000}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
    ]
    text = transcript(history)
    assert text.startswith("<earlier_conversation>") and text.endswith("</earlier_conversation>")
    assert "user: Run it." in text and 'tool call Bash: {"c": 1}' in text
    assert "assistant: Done." in text and "x" * 4000 in text and "x" * 4001 not in text


@needs_sdk
@pytest.mark.timeout(240)
def test_an_sdk_agent_answers_through_the_gateway_and_is_billed(alice, fake_anthropic):
    spawned = alice.post("/api/v1/agents", json={"name": "sdk", "architecture": SDK})
    assert spawned.status_code == 201, spawned.text
    assert spawned.json()["architecture"] == SDK
    agent = Agent.objects.get(pk=spawned.json()["agent_id"])
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    assert agent.backend == "process" and agent.endpoint.startswith("unix:")  # in bubblewrap
    fake_anthropic.enqueue(
        ToolUse("Bash", {"command": "echo sdk-was-here > note.txt && cat note.txt"}),
        Text("The note says sdk-was-here."),
    )

    sid = _session(alice, str(agent.pk))
    reply = alice.post(f"/api/v1/sessions/{sid}/messages", json={"content": "Leave a note."})

    assert reply.status_code == 200, reply.text
    assert reply.json()["content"] == "The note says sdk-was-here."
    # The CLI's calls came through the gateway, which put the platform's key on them; the
    # agent's token stayed between the runtime and the gateway.
    calls = [r for r in fake_anthropic.requests if r.path == "/v1/messages"]
    assert len(calls) == 2 and all(r.api_key == PLATFORM_KEY for r in calls)
    assert all(r.headers["user-agent"].startswith("claude-cli/") for r in calls)
    assert {r.path for r in fake_anthropic.requests} == {"/v1/messages"}
    # Nor did the CLI ask its proxy for anything else (telemetry, updates, token counts).
    log = sandbox.driver().logs(agent.sandbox_id, lines=2000)
    assert "Using bundled Claude Code CLI" in log and "the CLI asked for" not in log
    for r in fake_anthropic.requests:
        assert "agt_" not in json.dumps(r.headers) + json.dumps(r.body)
    # Its tool ran in the sandbox's workspace, and the turn recorded it like the built-in's.
    answer = Message.objects.get(role=Message.Role.ASSISTANT)
    (call,) = answer.tool_calls
    assert call["name"] == "Bash" and "sdk-was-here" in call["output"]
    assert call["is_error"] is False
    # Each upstream call is a row of the ledger, billed to the agent and the session.
    rows = UsageRecord.objects.filter(agent=agent)
    assert rows.count() == 2 and all(str(row.session_id) == sid for row in rows)
    assert sum(row.output_tokens for row in rows) > 0

    # A second turn goes on from the first: Claude sees the conversation so far.
    fake_anthropic.enqueue(Text("Still here."))
    again = alice.post(f"/api/v1/sessions/{sid}/messages", json={"content": "Still there?"})
    assert again.status_code == 200, again.text
    assert again.json()["content"] == "Still here."
    last = fake_anthropic.requests[-1].body
    seen = json.dumps(last["messages"])
    assert "Leave a note." in seen and "The note says sdk-was-here." in seen
    assert UsageRecord.objects.filter(agent=agent).count() == 3


@pytest.mark.parametrize("route", ["/api/v1/agents", "/v1/agents/spawn"])
@pytest.mark.parametrize("name", ["langchain", "", "BUILTIN", 7])
def test_an_unknown_architecture_is_refused(user, client_for, route, name):
    refused = client_for(user).post(route, {"name": "x", "architecture": name}, format="json")

    assert refused.status_code == 400, refused.content
    assert "architecture" in refused.json()["error"]["details"]
    assert not Agent.objects.exists()


def test_an_sdk_agent_too_small_for_its_cli_is_refused(user, client_for):
    refused = client_for(user).post(
        "/api/v1/agents", {"name": "x", "architecture": SDK, "memory": 256}, format="json"
    )

    assert refused.status_code == 400, refused.content
    assert "memory" in refused.json()["error"]["details"]
    assert not Agent.objects.exists()


@pytest.mark.parametrize(
    "spec",
    [
        {"mcp_servers": [{"name": "notes", "url": "https://mcp.example.com/mcp"}]},
        {"console_mcp": True},
    ],
)
def test_an_sdk_agent_is_refused_mcp_servers(user, client_for, spec):
    refused = client_for(user).post(
        "/api/v1/agents", {"name": "x", "architecture": SDK, **spec}, format="json"
    )

    assert refused.status_code == 400, refused.content
    assert "built-in loop only" in refused.json()["error"]["message"]
    assert not Agent.objects.exists()


def test_microvm_agents_are_refused_the_sdk_their_guest_lacks(user, client_for, settings):
    settings.SANDBOX_BACKEND = "qemu"

    refused = client_for(user).post(
        "/api/v1/agents", {"name": "x", "architecture": SDK}, format="json"
    )

    assert refused.status_code == 400, refused.content
    assert "microVM guest" in refused.json()["error"]["message"]
    assert not Agent.objects.exists()


def test_a_host_without_the_sdk_refuses_it_with_the_reason(user, client_for, monkeypatch):
    # This host has it: stand in for one that has not (the runtime's test removes it for real).
    reason = "the Claude Agent SDK is not installed on this host"
    monkeypatch.setattr(sandbox, "architecture_problem", lambda name: reason)

    refused = client_for(user).post(
        "/api/v1/agents", {"name": "x", "architecture": SDK}, format="json"
    )

    assert refused.status_code == 400, refused.content
    assert refused.json()["error"]["message"] == reason
    assert not Agent.objects.exists()


def test_the_hypercore_spawn_takes_it_and_the_agent_shows_it(user, client_for):
    client = client_for(user)

    spawned = client.post("/v1/agents/spawn", {"architecture": "builtin"}, format="json")

    assert spawned.status_code == 201, spawned.content
    agent_id = spawned.json()["agent_id"]
    shown = client.get(f"/v1/agents/get?agent_id={agent_id}").json()
    assert shown["architecture"] == "builtin"
    listed = client.get("/api/v1/agents").json()
    assert [a["architecture"] for a in listed["results"]] == ["builtin"]


@pytest.mark.parametrize("architecture", ["builtin", SDK])
def test_the_runtime_is_told_its_architecture(user, architecture):
    from agents.services import agent_spawn

    if architecture == SDK and sandbox.architecture_problem(SDK):
        pytest.skip(sandbox.architecture_problem(SDK))
    agent = agent_spawn(owner=user, name="x", architecture=architecture)

    assert sandbox.runtime_spec(agent=agent).env["AGENT_ARCHITECTURE"] == architecture
    assert Agent.objects.get().architecture == architecture
