"""``/mcp`` over Streamable HTTP, with the SDK's own client against the console on loopback."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone

from agents.models import Agent, SandboxHost
from console.models import AuditEvent, Budget
from console.selectors import usage_summary
from console.services import TokenUsage, usage_record
from mcpserver.models import ToolCall
from scaling.models import ScalingRule
from tests.mcpserver.sdk import answer, http_session

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet-5-5"

# Each tool's (readOnlyHint, destructiveHint).
HINTS = {
    "agents_list": (True, False),
    "agent_get": (True, False),
    "agent_spawn": (False, False),
    "agent_stop": (False, True),
    "agent_start": (False, False),
    "agent_pause": (False, False),
    "agent_resume": (False, False),
    "agent_restart": (False, True),
    "agent_delete": (False, True),
    "agent_logs": (True, False),
    "agents_stop_idle": (False, True),
    "fleet_stats": (True, False),
    "usage": (True, False),
    "budgets": (True, False),
    "hosts": (True, False),
    "health": (True, False),
    "scaling_rules_list": (True, False),
    "scaling_simulate": (True, False),
    "scaling_rule_update": (False, True),
    "operator_approvals": (True, False),
    "operator_decide": (False, False),
}


def _agent(owner, **fields) -> Agent:
    return Agent.objects.create(
        owner=owner, model=MODEL, sandbox_id=str(uuid.uuid4()), name="row", **fields
    )


def _error(result) -> dict:
    assert result.is_error, result
    body = answer(result)
    assert set(body["error"]) >= {"code", "message", "details"}, body
    return body["error"]


@pytest.mark.parametrize(("mode", "version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
def test_the_tools_come_with_schemas_descriptions_and_hints(
    asgi_server, user, key_of, mode, version
):
    async def work(client):
        return client.protocol_version, await client.list_tools()

    protocol, listed = http_session(asgi_server, key_of(user), work, mode=mode)

    assert protocol == version
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == set(HINTS)
    for name, tool in tools.items():
        assert tool.input_schema["type"] == "object", name
        assert tool.input_schema["additionalProperties"] is False, name
        assert len(tool.description or "") > 60, name
        hints = (tool.annotations.read_only_hint, tool.annotations.destructive_hint)
        assert hints == HINTS[name], name
        assert tool.annotations.open_world_hint is False
    assert "gpus" in tools["hosts"].description
    assert tools["agent_get"].input_schema["required"] == ["agent_id"]


def test_an_agent_is_spawned_read_stopped_and_deleted_with_the_tools(live_console, user, key_of):
    async def work(client):
        spawned = answer(await client.call_tool("agent_spawn", {"name": "mcp", "memory": 256}))
        agent_id = spawned["agent_id"]
        listed = answer(await client.call_tool("agents_list", {}))
        got = answer(await client.call_tool("agent_get", {"agent_id": agent_id}))
        logs = answer(await client.call_tool("agent_logs", {"agent_id": agent_id, "lines": 5}))
        stats = answer(await client.call_tool("fleet_stats", {}))
        stopped = answer(await client.call_tool("agent_stop", {"agent_id": agent_id}))
        deleted = answer(await client.call_tool("agent_delete", {"agent_id": agent_id}))
        return spawned, listed, got, logs, stats, stopped, deleted

    spawned, listed, got, logs, stats, stopped, deleted = http_session(
        live_console, key_of(user), work
    )

    assert (spawned["user_id"], spawned["name"], spawned["memory"]) == ("alice", "mcp", 256)
    assert [row["agent_id"] for row in listed["agents"]] == [spawned["agent_id"]]
    assert got["status"] == "running", got["last_error"]
    assert logs["agent_id"] == spawned["agent_id"] and isinstance(logs["log"], str)
    assert (stats["scope"], stats["total_agents"]) == ("own", 1)
    assert stopped["status"] in ("stopping", "stopped")
    assert deleted["deleted"] is True
    agent = Agent.objects.get(pk=spawned["agent_id"])
    assert agent.owner == user and agent.deleted_at is not None
    calls = list(ToolCall.objects.order_by("created_at").values_list("tool", "outcome", "user"))
    assert calls == [
        (tool, "ok", user.pk)
        for tool in (
            "agent_spawn",
            "agents_list",
            "agent_get",
            "agent_logs",
            "fleet_stats",
            "agent_stop",
            "agent_delete",
        )
    ]
    assert ToolCall.objects.filter(transport="http", api_key__user=user).count() == 7


def test_an_agent_is_paused_and_resumed_with_the_tools_by_its_owner_only(
    live_console, user, outsider, key_of
):
    async def spawn(client):
        return answer(await client.call_tool("agent_spawn", {"name": "mcp", "memory": 256}))

    agent_id = http_session(live_console, key_of(user), spawn)["agent_id"]

    async def intrude(client):
        return await client.call_tool("agent_pause", {"agent_id": agent_id})

    async def read_only(client):
        return await client.call_tool("agent_pause", {"agent_id": agent_id})

    assert _error(http_session(live_console, key_of(outsider), intrude))["code"] == (
        "agent_not_found"
    )
    assert _error(http_session(live_console, key_of(user, "read"), read_only))["code"] == (
        "forbidden"
    )
    assert Agent.objects.get(pk=agent_id).status == "running"

    async def work(client):
        paused = answer(await client.call_tool("agent_pause", {"agent_id": agent_id}))
        again = answer(await client.call_tool("agent_pause", {"agent_id": agent_id}))
        resumed = answer(await client.call_tool("agent_resume", {"agent_id": agent_id}))
        return paused, again, resumed

    paused, again, resumed = http_session(live_console, key_of(user), work)

    assert paused["status"] == "paused", paused
    assert paused["pause_method"] in ("freezer", "sigstop")  # sigstop: no freezer cgroup here
    assert again["status"] == "paused"
    assert (resumed["status"], resumed["pause_method"]) == ("running", ""), resumed


def test_a_read_only_key_cannot_call_a_tool_that_writes(asgi_server, user, key_of):
    async def work(client):
        spawn = await client.call_tool("agent_spawn", {"name": "no"})
        listed = await client.call_tool("agents_list", {})
        return spawn, listed

    spawn, listed = http_session(asgi_server, key_of(user, "read"), work)

    error = _error(spawn)
    assert error["code"] == "forbidden"
    assert error["details"] == {"required_scope": "write"}
    assert not listed.is_error
    assert not Agent.objects.exists()
    refused = ToolCall.objects.get(tool="agent_spawn")
    assert (refused.outcome, refused.error_code) == ("error", "forbidden")


def test_another_tenants_agent_does_not_exist_for_the_caller(
    asgi_server, user, outsider, operator, key_of
):
    theirs = _agent(outsider, status=Agent.Status.STOPPED)

    async def work(client):
        return [
            await client.call_tool(tool, {"agent_id": str(theirs.pk)})
            for tool in ("agent_get", "agent_start", "agent_delete", "agent_logs")
        ] + [await client.call_tool("agents_list", {})]

    *refused, listed = http_session(asgi_server, key_of(user), work)

    for result in refused:
        assert _error(result)["code"] == "agent_not_found"
    assert answer(listed)["agents"] == []
    theirs.refresh_from_db()
    assert (theirs.status, theirs.deleted_at) == ("stopped", None)

    async def as_operator(client):
        return await client.call_tool("agent_get", {"agent_id": str(theirs.pk)})

    seen = answer(
        http_session(asgi_server, key_of(operator, "read", "write", "admin"), as_operator)
    )
    assert seen["user_id"] == "mallory"


def test_bad_arguments_are_tool_errors_not_protocol_failures(asgi_server, user, key_of):
    async def work(client):
        return [
            await client.call_tool("agent_get", {}),
            await client.call_tool("agent_get", {"agent_id": "not-an-id"}),
            await client.call_tool("agents_list", {"colour": "blue"}),
            await client.call_tool("usage", {"group_by": "week"}),
            await client.call_tool("usage", {"tz": "Mars/Olympus"}),
            await client.call_tool("agent_spawn", {"memory": 1}),
            await client.call_tool("agents_stop_idle", {"idle_minutes": 0}),
            await client.call_tool("no_such_tool", {}),
        ]

    results = http_session(asgi_server, key_of(user), work)

    codes = [_error(result)["code"] for result in results]
    assert codes == ["invalid_request"] * 7 + ["not_found"]
    messages = [_error(result)["message"] for result in results]
    assert "agent_id" in messages[0] and "agent_id" in messages[1]
    assert "tz" in messages[4] and "memory" in messages[5]
    assert ToolCall.objects.filter(outcome="error").count() == 8


def test_a_request_without_a_valid_credential_is_refused_with_401(asgi_server, user):
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}

    for credential in ({}, {"Authorization": "Bearer ac_0000_nope"}, {"x-api-key": "nope"}):
        response = httpx.post(f"{asgi_server}/mcp", json=initialize, headers=headers | credential)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
        error = response.json()["error"]
        assert error["code"] == "not_authenticated" and error["message"]
    assert not ToolCall.objects.exists()


def test_a_jwt_is_a_credential_too(asgi_server, user):
    tokens = httpx.post(
        f"{asgi_server}/api/v1/auth/login", json={"username": "alice", "password": "pw"}
    ).json()

    async def work(client):
        return await client.call_tool("fleet_stats", {})

    assert answer(http_session(asgi_server, tokens["access"], work))["scope"] == "own"
    call = ToolCall.objects.get()
    assert (call.user, call.api_key) == (user, None)


def test_usage_is_grouped_by_agent_model_and_day_for_the_callers_own(
    asgi_server, user, outsider, key_of
):
    agent = _agent(user)
    now = timezone.now()
    for owner, agent_id, tokens in ((user, agent.pk, 100), (user, None, 50), (outsider, None, 7)):
        usage_record(
            user_id=owner.pk,
            model=MODEL,
            agent_id=agent_id,
            usage=TokenUsage(input_tokens=tokens, output_tokens=tokens),
            at=now - timedelta(hours=2),
        )
    start, end = now - timedelta(days=2), now + timedelta(minutes=1)

    async def work(client):
        return {
            group: answer(
                await client.call_tool(
                    "usage",
                    {"group_by": group, "start": start.isoformat(), "end": end.isoformat()},
                )
            )
            for group in ("agent", "model", "day")
        }

    found = http_session(asgi_server, key_of(user), work)

    for group, body in found.items():
        expected = usage_summary(user_ids=[user.pk], start=start, end=end, group_by=group)
        assert len(body["rows"]) == len(expected), group
        assert sum(row["total_tokens"] for row in body["rows"]) == 300, group
    by_agent = {row["agent_id"]: row["total_tokens"] for row in found["agent"]["rows"]}
    assert by_agent == {str(agent.pk): 200, None: 100}
    assert [row["model"] for row in found["model"]["rows"]] == [MODEL]


def test_usage_of_another_user_is_for_operators(asgi_server, user, outsider, key_of):
    async def work(client):
        return await client.call_tool("usage", {"user_id": outsider.pk})

    assert _error(http_session(asgi_server, key_of(user), work))["code"] == "forbidden"


def test_budgets_say_what_remains(asgi_server, user, outsider, key_of):
    Budget.objects.create(user=user, metric="usd", window="month", limit=Decimal(10), used=3)

    async def work(client):
        mine = await client.call_tool("budgets", {})
        theirs = await client.call_tool("budgets", {"user_id": "mallory"})
        return mine, theirs

    mine, theirs = http_session(asgi_server, key_of(user), work)

    budget = answer(mine)["budgets"][0]
    assert (budget["metric"], budget["limit"], budget["used"], budget["remaining"]) == (
        "usd",
        "10",
        "3",
        "7",
    )
    assert _error(theirs)["code"] == "forbidden"


def test_hosts_with_their_free_capacity_are_for_operators(
    asgi_server, user, operator, key_of, settings
):
    here = SandboxHost.objects.get(name=settings.SANDBOX_HOST_NAME)
    l4 = {"index": 0, "model": "NVIDIA L4", "memory_mib": 23034, "uuid": "GPU-l4", "mig": []}
    a100 = {
        "index": 1,
        "model": "NVIDIA A100",
        "memory_mib": 81920,
        "uuid": "GPU-a100",
        "mig": [{"profile": "1g.10gb", "uuid": f"MIG-{n}"} for n in range(2)],
    }
    SandboxHost.objects.filter(pk=here.pk).update(gpus=[l4, a100])
    held = [{"uuid": "MIG-0", "index": 1, "model": "NVIDIA A100", "memory_mib": 10240}]
    _agent(
        user,
        status=Agent.Status.RUNNING,
        vcpus=2,
        memory_mib=1024,
        host=here,
        gpu_count=1,
        gpu_profile="1g.10gb",
        gpus=[held[0] | {"profile": "1g.10gb", "pci_address": ""}],
    )

    async def hosts(client):
        return await client.call_tool("hosts", {})

    host = answer(http_session(asgi_server, key_of(operator, "read", "admin"), hosts))["hosts"][0]
    assert host["name"] == settings.SANDBOX_HOST_NAME
    assert host["capacity"] == {"vcpus": 64, "memory_mib": 65536}
    assert host["used"] == {"vcpus": 2, "memory_mib": 1024}
    assert host["free"] == {"vcpus": 62, "memory_mib": 64512}
    assert (host["state"], host["agents"]) == ("online", 1)
    assert host["gpus"] == {
        "capacity": 3,
        "used": 1,
        "free": [
            {"model": "NVIDIA A100", "profile": "1g.10gb", "count": 1},
            {"model": "NVIDIA L4", "profile": "", "count": 1},
        ],
    }
    refused = _error(http_session(asgi_server, key_of(user), hosts))
    assert (refused["code"], refused["details"]) == ("forbidden", {"required_scope": "admin"})


def test_health_says_whether_the_console_is_ready(asgi_server, user, key_of):
    async def work(client):
        return await client.call_tool("health", {})

    health = answer(http_session(asgi_server, key_of(user, "read"), work))

    assert health["live"] == "ok"
    assert set(health["checks"]) >= {"database", "broker", "channel_layer"}
    assert health["checks"]["database"] == "ok"


def test_idle_agents_are_stopped_the_callers_own_only(asgi_server, user, outsider, key_of):
    long_ago = timezone.now() - timedelta(hours=2)
    idle = _agent(user, status=Agent.Status.RUNNING, last_active_at=long_ago)
    busy = _agent(user, status=Agent.Status.RUNNING, last_active_at=timezone.now())
    theirs = _agent(outsider, status=Agent.Status.RUNNING, last_active_at=long_ago)

    async def work(client):
        return await client.call_tool("agents_stop_idle", {"idle_minutes": 30})

    stopped = answer(http_session(asgi_server, key_of(user), work))

    assert stopped == {"stopped": [str(idle.pk)], "count": 1}
    statuses = dict(Agent.objects.values_list("pk", "status"))
    assert statuses[busy.pk] == statuses[theirs.pk] == "running"
    assert statuses[idle.pk] in ("stopping", "stopped")


def test_scaling_rules_are_listed_simulated_and_changed_by_operators(
    asgi_server, user, operator, key_of
):
    rule = ScalingRule.objects.create(
        name="pool", owner=user, model=MODEL, min_agents=1, max_agents=4
    )

    async def work(client):
        listed = await client.call_tool("scaling_rules_list", {})
        simulated = await client.call_tool(
            "scaling_simulate",
            {
                "rule": {"min_agents": 1, "max_agents": 3},
                "trace": {"shape": "spike", "high": 500},
            },
        )
        changed = await client.call_tool(
            "scaling_rule_update", {"rule_id": rule.pk, "changes": {"max_agents": 6}}
        )
        broken = await client.call_tool(
            "scaling_rule_update", {"rule_id": rule.pk, "changes": {"min_agents": 9}}
        )
        missing = await client.call_tool(
            "scaling_rule_update", {"rule_id": 99999, "changes": {"max_agents": 2}}
        )
        bad_trace = await client.call_tool(
            "scaling_simulate", {"trace": {"shape": "spike", "csv": "0,1"}}
        )
        return listed, simulated, changed, broken, missing, bad_trace

    listed, simulated, changed, broken, missing, bad_trace = http_session(
        asgi_server, key_of(operator, "read", "write", "admin"), work
    )

    assert [r["name"] for r in answer(listed)["rules"]] == ["pool"]
    assert answer(simulated)["summary"]["peak_agents"] <= 3
    assert answer(changed)["max_agents"] == 6
    rule.refresh_from_db()
    assert rule.max_agents == 6
    audit = AuditEvent.objects.get(action="scalingrule.change")
    assert (audit.actor, audit.changes) == (operator, {"max_agents": [4, 6]})
    assert _error(broken)["code"] == "invalid_request"
    assert _error(missing)["code"] == "not_found"
    assert _error(bad_trace)["message"].startswith("trace.non_field_errors: ")

    async def as_user(client):
        return [
            await client.call_tool("scaling_rules_list", {}),
            await client.call_tool(
                "scaling_rule_update", {"rule_id": rule.pk, "changes": {"max_agents": 1}}
            ),
        ]

    for result in http_session(asgi_server, key_of(user), as_user):
        assert _error(result)["details"] == {"required_scope": "admin"}
    rule.refresh_from_db()
    assert rule.max_agents == 6


def test_the_agent_list_and_the_usage_summary_are_resources(asgi_server, user, key_of):
    agent = _agent(user)

    async def work(client):
        listed = await client.list_resources()
        agents = await client.read_resource("console://agents")
        usage = await client.read_resource("console://usage/summary")
        return listed, agents, usage

    listed, agents, usage = http_session(asgi_server, key_of(user), work)

    assert {str(r.uri) for r in listed.resources} == {"console://agents", "console://usage/summary"}
    assert json.loads(agents.contents[0].text)["agents"][0]["agent_id"] == str(agent.pk)
    assert json.loads(usage.contents[0].text)["group_by"] == "model"
    assert set(ToolCall.objects.values_list("tool", flat=True)) == {
        "console://agents",
        "console://usage/summary",
    }


def test_a_users_own_anthropic_key_never_reaches_the_log(asgi_server, user, key_of):
    async def work(client):
        return await client.call_tool(
            "agent_spawn", {"name": "k", "anthropic_api_key": "not a key"}
        )

    http_session(asgi_server, key_of(user), work)

    assert ToolCall.objects.get().arguments == {"name": "k", "anthropic_api_key": "***"}


def test_a_client_without_the_sdk_calls_a_tool_with_one_post(asgi_server, user, key_of):
    """The README's ``curl``: one JSON-RPC request, one JSON answer, no session to open."""
    response = httpx.post(
        f"{asgi_server}/mcp",
        headers={
            "Authorization": f"Bearer {key_of(user)}",
            "Accept": "application/json, text/event-stream",
        },
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "fleet_stats", "arguments": {}},
        },
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert (body["id"], body["result"]["isError"]) == (1, False)
    assert body["result"]["structuredContent"]["scope"] == "own"
