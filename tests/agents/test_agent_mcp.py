"""Agents with MCP tools: the servers a spawn names, reached from the sandbox only through the
gateway (``/gateway/mcp/<server>``), their secrets added there; the console's own MCP server,
acting as the agent's owner; and the built-in tools a spawn chooses."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from agents import sandbox
from agents.models import Agent, AgentMcpServer, Message
from console.models import Quota
from tests.fakes.anthropic import Text, ToolUse
from tests.polling import eventually

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "notes-server-secret-4c1e"


class _Seen:
    """Records the headers of every request an ASGI app gets."""

    def __init__(self, app: Any) -> None:
        self.app, self.headers = app, []

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            self.headers.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@pytest.fixture
def notes_server() -> Iterator[tuple[str, _Seen]]:
    """A tiny MCP server made with the SDK, on loopback: its URL, and the headers it saw."""
    server = MCPServer("notes")

    @server.tool()
    def echo(text: str) -> str:
        """Say the text back."""
        return f"echo: {text}"

    seen = _Seen(server.streamable_http_app(stateless_http=True, json_response=True))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    running = uvicorn.Server(uvicorn.Config(seen, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    eventually(lambda: running.started, 30, failing="the MCP server did not start")
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp", seen
    running.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture
def alice(user, api_key, live_console) -> Iterator[httpx.Client]:
    Quota.objects.update_or_create(user=user, defaults={"requests_per_minute": None})
    headers = {"Authorization": f"Bearer {api_key(user)}"}
    with httpx.Client(base_url=live_console, headers=headers, timeout=60) as http:
        yield http


def _spawn(http: httpx.Client, **spec: Any) -> Agent:
    spawned = http.post("/api/v1/agents", json={"name": "tooled", "memory": 256, **spec})
    assert spawned.status_code == 201, spawned.text
    agent = Agent.objects.get(pk=spawned.json()["agent_id"])
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    return agent


def _turn(http: httpx.Client, agent: Agent, prompt: str) -> dict[str, Any]:
    session = http.post("/api/v1/sessions", json={"agent_id": str(agent.pk)})
    assert session.status_code == 201, session.text
    sid = session.json()["session_id"]
    reply = http.post(f"/api/v1/sessions/{sid}/messages", json={"content": prompt})
    assert reply.status_code == 200, reply.text
    return reply.json()


def _tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    last = body["messages"][-1]
    return [b for b in last["content"] if isinstance(b, dict) and b["type"] == "tool_result"]


@pytest.mark.timeout(120)
def test_an_agent_calls_its_mcp_servers_tool_through_the_gateway(
    alice, settings, fake_anthropic, notes_server
):
    url, seen = notes_server
    settings.AGENT_MCP_ALLOWED_HOSTS = ["127.0.0.1"]
    agent = _spawn(
        alice,
        tools=["read_file"],
        mcp_servers=[{"name": "notes", "url": url, "secret": SECRET}],
    )
    fake_anthropic.enqueue(ToolUse("notes__echo", {"text": "hello"}), Text("It said hello."))

    reply = _turn(alice, agent, "Use the echo tool.")

    assert reply["content"] == "It said hello."
    first, second = fake_anthropic.requests[-2:]
    # Built-ins limited to the one asked for, the server's tools beside them.
    assert [t["name"] for t in first.body["tools"]] == ["read_file", "notes__echo"]
    (result,) = _tool_results(second.body)
    assert "echo: hello" in json.dumps(result["content"]) and not result["is_error"]
    # Recorded with the turn.
    answer = Message.objects.get(role=Message.Role.ASSISTANT)
    (call,) = answer.tool_calls
    assert call["name"] == "notes__echo" and call["input"] == {"text": "hello"}
    assert "echo: hello" in call["output"] and call["is_error"] is False
    history = alice.get(f"/api/v1/sessions/{answer.session_id}").json()["messages"]
    assert history[-1]["tool_calls"] == [call]
    # The secret reached the server, from the gateway; the agent's token never did.
    assert seen.headers and all(h["authorization"] == f"Bearer {SECRET}" for h in seen.headers)
    assert not any("agt_" in value for h in seen.headers for value in h.values())
    # The secret never went into the sandbox: not its environment, files, nor its requests.
    spec = sandbox.runtime_spec(agent=agent)
    assert SECRET not in json.dumps(dict(spec.env)) + json.dumps(dict(spec.secrets))
    assert spec.env["AGENT_MCP_SERVERS"] == "notes" and spec.env["AGENT_TOOLS"] == "read_file"
    for request in fake_anthropic.requests:
        assert SECRET not in json.dumps(request.body) + json.dumps(request.headers)
    assert AgentMcpServer.objects.get().secret_encrypted not in ("", SECRET)
    assert SECRET not in alice.get(f"/api/v1/agents/{agent.pk}").text


def _relay(live: str, token: str | None, name: str) -> httpx.Response:
    headers = {"Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return httpx.post(f"{live}/gateway/mcp/{name}", json=body, headers=headers, timeout=30)


def test_an_agent_reaches_only_its_own_servers(
    user, outsider, live_console, settings, notes_server
):
    url, seen = notes_server
    settings.AGENT_MCP_ALLOWED_HOSTS = ["127.0.0.1"]
    mine = Agent.objects.create(owner=user, model="m", status=Agent.Status.RUNNING)
    theirs = Agent.objects.create(owner=outsider, model="m", status=Agent.Status.RUNNING)
    AgentMcpServer.objects.create(agent=theirs, name="notes", url=url)
    token = sandbox.agent_token_issue(agent=mine)

    assert _relay(live_console, token, "notes").status_code == 404  # another agent's
    assert _relay(live_console, token, "elsewhere").status_code == 404  # no such server
    assert _relay(live_console, token, "console").status_code == 404  # not given console_mcp
    assert _relay(live_console, None, "notes").status_code == 401
    assert _relay(live_console, "agt_forged", "notes").status_code == 401
    assert not seen.headers  # none of them reached the server

    theirs_token = sandbox.agent_token_issue(agent=theirs)
    assert _relay(live_console, theirs_token, "notes").status_code == 200
    Agent.objects.filter(pk=theirs.pk).update(status=Agent.Status.STOPPED)
    assert _relay(live_console, theirs_token, "notes").status_code == 401  # no longer runs


def test_an_address_the_console_may_not_reach_is_refused_when_connecting(
    user, live_console, settings, notes_server
):
    url, seen = notes_server
    settings.AGENT_MCP_ALLOWED_HOSTS = []  # public hosts only: loopback is not one
    agent = Agent.objects.create(owner=user, model="m", status=Agent.Status.RUNNING)
    # Kept from before, or a name that resolves to loopback by the time it is called.
    AgentMcpServer.objects.create(agent=agent, name="notes", url=url)
    named = url.replace("127.0.0.1", "localhost")
    AgentMcpServer.objects.create(agent=agent, name="named", url=named)

    for name in ("notes", "named"):
        refused = _relay(live_console, sandbox.agent_token_issue(agent=agent), name)
        assert refused.status_code == 502, refused.text
        assert refused.json()["error"]["code"] == "mcp_server_unreachable"
    assert not seen.headers


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        ([], "http://127.0.0.1:8000/mcp"),
        ([], "http://169.254.169.254/latest/meta-data/"),
        ([], "http://10.1.2.3/mcp"),
        ([], "http://[::1]/mcp"),
        ([], "http://[::ffff:127.0.0.1]/mcp"),
        ([], "http://localhost/mcp"),
        ([], "file:///etc/passwd"),
        ([], "http://user:pw@example.com/mcp"),
        (["mcp.example.com"], "https://other.example.com/mcp"),
    ],
)
def test_a_url_an_agent_may_not_name_is_refused_at_spawn(user, client_for, settings, allowed, url):
    settings.AGENT_MCP_ALLOWED_HOSTS = allowed
    spec = {"name": "x", "memory": 256, "mcp_servers": [{"name": "notes", "url": url}]}

    refused = client_for(user).post("/api/v1/agents", spec, format="json")

    assert refused.status_code == 400, refused.content
    assert not Agent.objects.exists()


def test_server_names_must_be_distinct_and_not_the_consoles(user, client_for):
    url = "https://mcp.example.com/mcp"
    for servers in (
        [{"name": "a", "url": url}, {"name": "a", "url": url}],
        [{"name": "console", "url": url}],
        [{"name": "Bad_Name", "url": url}],
    ):
        spec = {"name": "x", "memory": 256, "mcp_servers": servers}
        assert client_for(user).post("/api/v1/agents", spec, format="json").status_code == 400
    assert not Agent.objects.exists()


@pytest.mark.parametrize(
    "spec",
    [
        {"mcp_servers": [{"name": "notes", "url": "https://mcp.example.com/mcp"}]},
        {"console_mcp": True},
    ],
)
def test_microvm_agents_are_refused_mcp_servers_their_guest_cannot_speak(
    user, client_for, settings, spec
):
    settings.SANDBOX_BACKEND = "qemu"

    refused = client_for(user).post("/api/v1/agents", {"name": "x", **spec}, format="json")

    assert refused.status_code == 400, refused.content
    assert "microVM guest" in refused.json()["error"]["message"]
    assert not Agent.objects.exists()


def test_the_runtime_loads_no_mcp_client_unless_given_servers():
    """The microVM guest carries the runtime's own dependencies only (no MCP SDK)."""
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def guest(name, *a, **k):\n"
        "    if name.split('.')[0] in {'mcp', 'httpx2'}:\n"
        "        raise ImportError(name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guest\n"
        "import agents.runtime.server\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_tools_limit_the_built_ins_within_the_operators(user, settings):
    settings.AGENT_RUNTIME_ENV = {"AGENT_TOOLS": "read_file,write_file"}
    agent = Agent.objects.create(
        owner=user, model="m", sandbox_id="s", builtin_tools=["run_command", "read_file"]
    )
    assert sandbox.runtime_spec(agent=agent).env["AGENT_TOOLS"] == "read_file"
    agent.builtin_tools = []
    assert sandbox.runtime_spec(agent=agent).env["AGENT_TOOLS"] == "none"
    agent.builtin_tools = None  # not chosen: the operator's
    assert sandbox.runtime_spec(agent=agent).env["AGENT_TOOLS"] == "read_file,write_file"


def _console_tools(live: str, token: str, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
    async def run() -> list[Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            transport = streamable_http_client(f"{live}/gateway/mcp/console", http_client=http)
            async with Client(transport, mode="legacy", cache=None) as client:  # type: ignore[arg-type]
                return [await client.call_tool(name, args) for name, args in calls]

    return asyncio.run(run())


def test_the_consoles_mcp_acts_as_the_owner_and_never_as_an_operator(
    user, outsider, operator, live_console
):
    mine = Agent.objects.create(
        owner=user, model="m", name="mine", status=Agent.Status.RUNNING, console_mcp=True
    )
    Agent.objects.create(owner=outsider, model="m", name="theirs", status=Agent.Status.RUNNING)
    ops = Agent.objects.create(
        owner=operator, model="m", name="ops", status=Agent.Status.RUNNING, console_mcp=True
    )

    (listed,) = _console_tools(
        live_console, sandbox.agent_token_issue(agent=mine), ("agents_list", {})
    )
    names = [row["name"] for row in json.loads(listed.content[0].text)["agents"]]
    assert names == ["mine"]

    listed, hosts = _console_tools(
        live_console, sandbox.agent_token_issue(agent=ops), ("agents_list", {}), ("hosts", {})
    )
    assert [r["name"] for r in json.loads(listed.content[0].text)["agents"]] == ["ops"]
    assert hosts.is_error
    assert json.loads(hosts.content[0].text)["error"]["details"]["required_scope"] == "admin"


@pytest.mark.timeout(120)
def test_a_console_mcp_agent_lists_its_owners_agents_in_a_turn(alice, outsider, fake_anthropic):
    Agent.objects.create(owner=outsider, model="m", name="theirs", status=Agent.Status.RUNNING)
    agent = _spawn(alice, console_mcp=True, tools=[])
    fake_anthropic.enqueue(ToolUse("console__agents_list", {}), Text("Listed."))

    _turn(alice, agent, "Which agents do I have?")

    first, second = fake_anthropic.requests[-2:]
    names = [t["name"] for t in first.body["tools"]]
    assert "console__agents_list" in names and "run_command" not in names
    (result,) = _tool_results(second.body)
    listed = json.dumps(result["content"])
    assert str(agent.pk) in listed and "theirs" not in listed
