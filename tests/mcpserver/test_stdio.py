"""``manage.py mcp_stdio --key …`` with the SDK's own client, which starts it as a desktop client
does, and talks to it over its stdin and stdout."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings
from django.db import connections
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from agents.models import Agent
from console.models import ApiKey
from console.services import api_key_revoke
from mcpserver.models import ToolCall
from tests.agents.workers import _database_url
from tests.mcpserver.sdk import answer

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _environment() -> dict[str, str]:
    """The test process's settings for the server it starts: its database, sandboxes and host."""
    return dict(os.environ) | {
        "DATABASE_URL": _database_url(),
        "PYTHONPATH": str(ROOT),
        "SANDBOX_STATE_DIR": str(settings.SANDBOX_STATE_DIR),
        "SANDBOX_HOST_NAME": settings.SANDBOX_HOST_NAME,
        "CONSOLE_VAR_DIR": str(settings.VAR_DIR),
    }


def _command(key: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), "mcp_stdio", "--key", key]


def stdio_session(key: str, work: Callable[[Client], Awaitable[T]]) -> T:
    """``work(client)``'s answer, with an SDK client talking to ``mcp_stdio --key key``."""
    command, *args = _command(key)
    server = StdioServerParameters(command=command, args=args, env=_environment(), cwd=str(ROOT))

    async def run() -> T:
        async with Client(server, cache=None) as client:
            return await work(client)

    return asyncio.run(run())


def _revoke_keys_of(owner) -> None:
    """Revoke ``owner``'s keys, from a thread of its own, whose connection is then closed."""
    try:
        for key in ApiKey.objects.filter(user=owner):
            api_key_revoke(key=key)
    finally:
        connections.close_all()


def test_an_agent_is_spawned_read_and_deleted_over_stdio(user, key_of):
    async def work(client: Client) -> dict[str, Any]:
        tools = await client.list_tools()
        spawned = answer(await client.call_tool("agent_spawn", {"name": "desk", "memory": 256}))
        agent_id = spawned["agent_id"]
        return {
            "tools": {tool.name for tool in tools.tools},
            "spawned": spawned,
            "got": answer(await client.call_tool("agent_get", {"agent_id": agent_id})),
            "listed": answer(await client.call_tool("agents_list", {})),
            "stopped": answer(await client.call_tool("agent_stop", {"agent_id": agent_id})),
            "deleted": answer(await client.call_tool("agent_delete", {"agent_id": agent_id})),
        }

    found = stdio_session(key_of(user), work)

    assert {"agent_spawn", "usage", "hosts", "scaling_rule_update"} <= found["tools"]
    assert found["spawned"]["user_id"] == "alice"
    assert found["got"]["status"] == "running", found["got"]["last_error"]
    assert found["listed"]["count"] == 1
    assert found["deleted"]["deleted"] is True
    assert Agent.objects.get().deleted_at is not None
    assert list(ToolCall.objects.order_by().values_list("transport", "outcome").distinct()) == [
        ("stdio", "ok")
    ]
    assert ToolCall.objects.filter(user=user).count() == 5


def test_refusals_over_stdio_are_tool_errors(user, outsider, key_of):
    theirs = Agent.objects.create(
        owner=outsider, model="claude-sonnet-5-5", sandbox_id=str(uuid.uuid4())
    )
    raw = key_of(user, "read")

    async def work(client: Client) -> list[Any]:
        results = [
            await client.call_tool("agent_spawn", {"name": "no"}),
            await client.call_tool("agent_get", {"agent_id": str(theirs.pk)}),
            await client.call_tool("usage", {"group_by": "fortnight"}),
            await client.call_tool("scaling_rules_list", {}),
        ]
        await asyncio.to_thread(_revoke_keys_of, user)
        results.append(await client.call_tool("fleet_stats", {}))
        return results

    results = stdio_session(raw, work)

    assert all(result.is_error for result in results)
    codes = [answer(result)["error"]["code"] for result in results]
    assert codes == [
        "forbidden",
        "agent_not_found",
        "invalid_request",
        "forbidden",
        "not_authenticated",
    ]
    assert not Agent.objects.filter(owner=user).exists()
    assert ToolCall.objects.filter(transport="stdio", outcome="error").count() == 4


def test_a_key_that_opens_nothing_stops_the_server_at_once(user):
    finished = subprocess.run(
        _command("ac_00000000_nothing"),
        env=_environment(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 1
    assert "the API key is unknown, revoked or expired" in finished.stderr
