"""The Anthropic key never enters a sandbox: not its environment, not any file it can read."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from agents import sandbox
from agents.models import Agent
from tests.fakes.anthropic import ToolUse
from vmdriver.isolation import bwrap_problem

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(bwrap_problem() is not None, reason=str(bwrap_problem())),
]

PLATFORM_KEY = "sk-ant-platform-secret-4f1c9e"
OWN_KEY = "sk-ant-api03-users-own-secret-77ab02-0123456789abcdef"


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_no_anthropic_key_reaches_the_sandbox(asgi_server, settings, fake_anthropic, user, api_key):
    settings.ANTHROPIC_API_KEY = PLATFORM_KEY
    settings.CONSOLE_BASE_URL = asgi_server
    settings.GATEWAY_URL = f"{asgi_server}/gateway"
    client = httpx.Client(
        base_url=asgi_server, timeout=30, headers={"Authorization": f"Bearer {api_key(user)}"}
    )
    for body in ({}, {"anthropic_api_key": OWN_KEY}):
        spawned = client.post("/v1/agents/spawn", json=body).json()
        reply = client.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "hi"})
        assert reply.status_code == 200, reply.text
    assert {r.api_key for r in fake_anthropic.requests} == {PLATFORM_KEY, OWN_KEY}

    drv = sandbox.driver()
    for agent in Agent.objects.all():
        status = drv.status(agent.sandbox_id)
        processes = _descendants(status.pid)
        assert len(processes) >= 3  # supervisor, bubblewrap, the runtime
        for pid in processes[1:]:  # everything inside bubblewrap
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert PLATFORM_KEY.encode() not in environ and OWN_KEY.encode() not in environ
            assert b"agt_" not in environ  # even the gateway token comes as a file, read once
        secrets = drv.socket_root / agent.sandbox_id / "secrets"
        assert secrets.is_dir() and not any(secrets.iterdir())  # the runtime deleted it

    state = Path(settings.SANDBOX_STATE_DIR)
    readable = [host for host, _ in drv.ro_binds] + [str(state)] + [str(drv.socket_root)]
    found = subprocess.run(
        ["grep", "-rlF", "--binary-files=text", "-e", PLATFORM_KEY, "-e", OWN_KEY, *readable],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert found.returncode == 1, f"a key is readable in: {found.stdout}"


def test_a_tool_command_cannot_read_the_gateway_token(
    asgi_server, settings, fake_anthropic, user, api_key
):
    settings.CONSOLE_BASE_URL = asgi_server
    settings.GATEWAY_URL = f"{asgi_server}/gateway"
    client = httpx.Client(
        base_url=asgi_server, timeout=30, headers={"Authorization": f"Bearer {api_key(user)}"}
    )
    spawned = client.post("/v1/agents/spawn", json={}).json()
    command = "cat /proc/$PPID/environ; cat /proc/1/environ; env; grep -r agt_ /proc/*/environ"
    fake_anthropic.enqueue(ToolUse("run_command", {"command": command}))
    reply = client.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "look around"})
    assert reply.status_code == 200, reply.text
    results = [
        block
        for message in fake_anthropic.requests[-1].body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    assert results, fake_anthropic.requests[-1].body
    leaked = json.dumps(results)
    assert "agt_" not in leaked, leaked
