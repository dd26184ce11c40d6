"""The console's operations as MCP tools: each with the input schema a model fills in, a
description it can act on, its read-only and destructive hints, and the scopes its REST
counterpart needs. Each runs the services and selectors the REST API runs, with the caller's
tenancy, and answers with the REST API's JSON."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from agents import selectors as agent_selectors
from agents import services as agent_services
from agents.models import Agent
from agents.sandbox import BUILTIN_TOOLS
from agents.serializers import AgentSerializer, SpawnRequestSerializer, agent_row_data, validated
from agents.services.hosts import gpu_summary, gpus_free, gpus_held
from agents.views import named_user, spawn_requested
from console import selectors as console_selectors
from console.api.serializers import UsageQuerySerializer, UsageRowSerializer
from console.models import ApiKey
from dashboard.selectors import host_loads
from mcpserver.approvals import operator_approvals, operator_decide
from mcpserver.services import Caller
from plumbing.errors import BadRequest, NotFound
from plumbing.readiness import readiness
from scaling import selectors as scaling_selectors
from scaling import services as scaling_services
from scaling.models import POLICY_FIELDS, ScalingRule
from scaling.serializers import (
    ScalingRuleQuerySerializer,
    ScalingRuleSerializer,
    SimulationRequestSerializer,
)
from scaling.simulator import TraceError, simulate

__all__ = ["TOOLS", "Tool", "agents_listed", "usage_listed"]

READ, WRITE, ADMIN = (scope.value for scope in ApiKey.Scope)

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool: what a model sees of it, the scopes its caller needs, and what it runs (a sync
    function, run on Django's thread for sync code, or a coroutine function)."""

    name: str
    title: str
    description: str
    input_schema: Json
    scopes: tuple[str, ...]
    read_only: bool
    destructive: bool
    run: Callable[[Caller, Json], Json] | Callable[[Caller, Json], Awaitable[Json]]


def _object(properties: Json, required: tuple[str, ...] = ()) -> Json:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_AGENT_ID = {"type": "string", "format": "uuid", "description": "The agent's id (agent_id)."}
_USERNAME = {
    "type": "string",
    "maxLength": 150,
    "description": "A username. Operators may name any user; anyone else only themselves.",
}


# --- Agents --------------------------------------------------------------------------------------


def _agent(caller: Caller, args: Json) -> Agent:
    """The agent ``args`` names, if the caller may see it; else it does not exist."""
    try:
        agent_id = uuid.UUID(str(args["agent_id"]))
    except ValueError:
        raise BadRequest(
            "agent_id is not a valid id", details={"agent_id": ["Must be a UUID."]}
        ) from None
    return agent_services.agent_for_user(
        user=caller.user, agent_id=agent_id, operator=caller.operator
    )


def agents_listed(caller: Caller, args: Json) -> Json:
    """The agents the caller may see, newest first, as ``GET /api/v1/agents`` lists them."""
    username = args.get("user_id")
    owner = named_user(caller.user, username, operator=caller.operator) if username else None
    agents = agent_selectors.agent_list(
        viewer=caller.user,
        operator=caller.operator,
        owner=owner,
        status=args.get("status"),
        model=args.get("model"),
        q=args.get("q"),
    )
    rows = [agent_row_data(row) for row in agent_selectors.agent_rows(agents)[: args["limit"]]]
    return {"agents": rows, "count": len(rows)}


def _agent_spawn(caller: Caller, args: Json) -> Json:
    data = validated(SpawnRequestSerializer, args)
    agent = spawn_requested(viewer=caller.user, operator=caller.operator, data=data)
    return dict(AgentSerializer(agent).data)


def _agent_get(caller: Caller, args: Json) -> Json:
    return dict(AgentSerializer(_agent(caller, args)).data)


def _agent_action(service: Callable[..., Agent], **extra: Any) -> Callable[[Caller, Json], Json]:
    def run(caller: Caller, args: Json) -> Json:
        agent = service(agent=_agent(caller, args), actor=caller.user)
        return dict(AgentSerializer(agent).data) | extra

    return run


def _agent_logs(caller: Caller, args: Json) -> Json:
    agent = _agent(caller, args)
    text = agent_services.agent_log_tail(agent=agent, lines=args["lines"])
    return {"agent_id": str(agent.pk), "status": agent.status, "log": text}


def _agents_stop_idle(caller: Caller, args: Json) -> Json:
    username = args.get("user_id")
    if username:
        owner = named_user(caller.user, username, operator=caller.operator)
    else:
        owner = None if caller.operator else caller.user
    stopped = agent_services.agents_stop_idle(
        idle_for=timedelta(minutes=args["idle_minutes"]), owner=owner, actor=caller.user
    )
    return {"stopped": [str(agent.pk) for agent in stopped], "count": len(stopped)}


def _fleet_stats(caller: Caller, args: Json) -> Json:
    return agent_selectors.agent_stats(viewer=caller.user, operator=caller.operator)


def _hosts(caller: Caller, args: Json) -> Json:
    hosts = []
    loads = host_loads()
    held = gpus_held(host_ids=[load.host.pk for load in loads])
    for load in loads:
        host = load.host
        capacity = {"vcpus": host.capacity_vcpus, "memory_mib": host.capacity_memory_mib}
        used = {"vcpus": load.vcpus, "memory_mib": load.memory_mib}
        hosts.append(
            {
                "name": host.name,
                "state": load.state,
                "backend": host.backend,
                "accel": host.accel,
                "agents": load.agents,
                "capacity": capacity,
                "used": used,
                "free": {name: max(0, capacity[name] - used[name]) for name in capacity},
                "gpus": {
                    "capacity": load.gpus_total,
                    "used": load.gpus,
                    "free": gpu_summary(gpus_free(host, held[host.pk])),
                },
                "last_seen_at": host.last_seen_at.isoformat(),
            }
        )
    return {"hosts": hosts, "count": len(hosts)}


# --- Usage and budgets ---------------------------------------------------------------------------


def usage_listed(caller: Caller, args: Json) -> Json:
    """Usage in a range grouped one way, as ``GET /api/v1/usage`` answers it."""
    params = validated(UsageQuerySerializer, args)
    group_by = params["group_by"]
    rows = console_selectors.usage_summary(
        user_ids=console_selectors.usage_readable_user_ids(
            viewer=caller.user, operator=caller.operator, user_id=params.get("user_id")
        ),
        start=params["start"],
        end=params["end"],
        group_by=group_by,
        tz=params["tz"],
    )
    return {
        "start": params["start"].isoformat(),
        "end": params["end"].isoformat(),
        "group_by": group_by,
        "tz": params["tz"],
        "rows": UsageRowSerializer(rows, many=True, context={"group_by": group_by}).data,
    }


def _budgets(caller: Caller, args: Json) -> Json:
    user = named_user(caller.user, args.get("user_id"), operator=caller.operator)
    return {"user_id": user.username, "budgets": agent_selectors.chat_budgets(user=user)}


# --- Health --------------------------------------------------------------------------------------


async def _health(caller: Caller, args: Json) -> Json:
    checks = await readiness()
    failing = [name for name, result in checks.items() if result != "ok"]
    return {
        "live": "ok",
        "ready": "unavailable" if failing else "ok",
        "checks": checks,
        "failing": failing,
    }


# --- Scaling -------------------------------------------------------------------------------------


def _scaling_rules(caller: Caller, args: Json) -> Json:
    filters = validated(ScalingRuleQuerySerializer, args)
    rules = scaling_selectors.scaling_rule_list(**filters)
    data = ScalingRuleSerializer(rules, many=True).data
    return {"rules": data, "count": len(data)}


def _scaling_simulate(caller: Caller, args: Json) -> Json:
    data = validated(SimulationRequestSerializer, args)
    try:
        result = simulate(
            rule=ScalingRule(**data.get("rule", {})),
            trace=data["trace"]["points"],
            start_agents=data.get("start_agents"),
        )
    except TraceError as exc:  # too long a replay for the rule's interval
        raise BadRequest(f"trace: {exc}", details={"trace": [str(exc)]}) from exc
    found = result.as_dict()
    return {"summary": found["summary"], "decisions": found["decisions"]}


def _scaling_rule_update(caller: Caller, args: Json) -> Json:
    rule = scaling_selectors.scaling_rule_list().filter(pk=args["rule_id"]).first()
    if rule is None:
        raise NotFound(f"no scaling rule {args['rule_id']}", details={"rule_id": args["rule_id"]})
    params = ScalingRuleSerializer(rule, data=args["changes"], partial=True)
    if not params.is_valid():
        field, problems = next(iter(params.errors.items()))
        details = {k: list(v) for k, v in params.errors.items()}
        raise BadRequest(f"{field}: {problems[0]}", details=details)
    scaling_services.scaling_rule_update(rule=rule, values=params.validated_data, actor=caller.user)
    return dict(ScalingRuleSerializer(rule).data)


# --- The table -----------------------------------------------------------------------------------

_TENANCY = (
    " Everyone sees and acts on their own agents only; operators (a staff user whose credential"
    " carries the admin scope) on everyone's."
)

TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            name="agents_list",
            title="List agents",
            description="List agents (not deleted), newest first, with their status, model, size"
            " and owner. Filter by status, model, a substring of the name, or (operators) an"
            " owner's username." + _TENANCY,
            input_schema=_object(
                {
                    "status": {"type": "string", "enum": Agent.Status.values},
                    "model": {"type": "string", "maxLength": 100},
                    "q": {"type": "string", "maxLength": 100, "description": "In the name."},
                    "user_id": _USERNAME,
                    "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                }
            ),
            scopes=(READ,),
            read_only=True,
            destructive=False,
            run=agents_listed,
        ),
        Tool(
            name="agent_get",
            title="Get an agent",
            description="One agent by its id: status, model, size, owner, last error, and the"
            " URLs of its chat and metrics endpoints." + _TENANCY,
            input_schema=_object({"agent_id": _AGENT_ID}, ("agent_id",)),
            scopes=(READ,),
            read_only=True,
            destructive=False,
            run=_agent_get,
        ),
        Tool(
            name="agent_spawn",
            title="Spawn an agent",
            description="Create an agent and boot it in a sandbox of its own. It answers at"
            " once with status 'pending'; poll agent_get until it is 'running'. Counts against"
            " the owner's quota of agents; refused when the hosts are full. Operators may spawn"
            " for another user (user_id).",
            input_schema=_object(
                {
                    "name": {"type": "string", "maxLength": 100},
                    "model": {
                        "type": "string",
                        "maxLength": 100,
                        "description": "A Claude model name; default: the console's default.",
                    },
                    "system_prompt": {"type": "string", "maxLength": 100_000},
                    "cores": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1},
                    "memory": {
                        "type": "integer",
                        "minimum": 64,
                        "maximum": 262_144,
                        "default": 512,
                        "description": "MiB.",
                    },
                    "max_concurrent": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 10_000,
                        "default": 100,
                        "description": "Sessions the agent serves at once.",
                    },
                    "user_id": _USERNAME | {"description": "The owner's username (operators)."},
                    "anthropic_api_key": {
                        "type": "string",
                        "maxLength": 512,
                        "description": "The owner's own Anthropic key (sk-ant-…), stored"
                        " encrypted and never returned; default: the console's.",
                    },
                    "gpus": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 16,
                        "default": 0,
                        "description": "GPUs (whole, or MIG slices with gpu_profile) on one"
                        " host, within the owner's max_gpus quota; see the hosts tool.",
                    },
                    "gpu_model": {
                        "type": "string",
                        "maxLength": 100,
                        "description": "Only GPUs whose model name holds this (A100, L4).",
                    },
                    "gpu_profile": {
                        "type": "string",
                        "maxLength": 32,
                        "pattern": "^([0-9]+g\\.[0-9]+gb)?$",
                        "description": "MIG slices of this profile (1g.10gb) instead of whole"
                        " GPUs.",
                    },
                    "tools": {
                        "type": "array",
                        "items": {"type": "string", "enum": list(BUILTIN_TOOLS)},
                        "description": "The built-in tools it has; default: all.",
                    },
                    "mcp_servers": {
                        "type": "array",
                        "maxItems": 16,
                        "items": _object(
                            {
                                "name": {"type": "string", "maxLength": 30},
                                "url": {"type": "string", "maxLength": 2000},
                                "secret": {
                                    "type": "string",
                                    "maxLength": 4096,
                                    "description": "Its bearer token, stored encrypted.",
                                },
                            },
                            required=("name", "url"),
                        ),
                        "description": "MCP servers whose tools it may use (as"
                        " <name>__<tool>), reached through the console's gateway.",
                    },
                    "console_mcp": {
                        "type": "boolean",
                        "default": False,
                        "description": "Give it these tools, acting as its owner (never as an"
                        " operator).",
                    },
                    "on_idle": {
                        "type": "string",
                        "enum": ["stop", "pause"],
                        "description": "Idle past the console's idle timeout, it is stopped, or"
                        " paused (its memory kept; its next turn resumes it). Default: stop.",
                    },
                    "architecture": {
                        "type": "string",
                        "enum": list(Agent.Architecture.values),
                        "default": Agent.Architecture.BUILTIN,
                        "description": "How it runs a chat turn: the runtime's own loop, or"
                        " the Claude Agent SDK (process hosts only).",
                    },
                }
            ),
            scopes=(WRITE,),
            read_only=False,
            destructive=False,
            run=_agent_spawn,
        ),
        Tool(
            name="agent_stop",
            title="Stop an agent",
            description="Stop a pending, starting, running or paused agent: its runtime ends (turns"
            " in flight are cut off) and its workspace is kept for agent_start." + _TENANCY,
            input_schema=_object({"agent_id": _AGENT_ID}, ("agent_id",)),
            scopes=(WRITE,),
            read_only=False,
            destructive=True,
            run=_agent_action(agent_services.agent_stop),
        ),
        Tool(
            name="agent_pause",
            title="Pause an agent",
            description="Pause a running agent: its sandbox is frozen, using no CPU and keeping"
            " its memory (its sessions too). A turn sent to it, or agent_resume, resumes it"
            " where it was. Pausing a paused agent changes nothing." + _TENANCY,
            input_schema=_object({"agent_id": _AGENT_ID}, ("agent_id",)),
            scopes=(WRITE,),
            read_only=False,
            destructive=False,
            run=_agent_action(agent_services.agent_pause),
        ),
        Tool(
            name="agent_resume",
            title="Resume an agent",
            description="Resume a paused agent where it was; it runs once its runtime answers."
            " Resuming a running agent changes nothing." + _TENANCY,
            input_schema=_object({"agent_id": _AGENT_ID}, ("agent_id",)),
            scopes=(WRITE,),
            read_only=False,
            destructive=False,
            run=_agent_action(agent_services.agent_resume),
        ),
        Tool(
            name="agent_start",
            title="Start an agent",
            description="Boot a stopped or failed agent again, with its workspace." + _TENANCY,
            input_schema=_object({"agent_id": _AGENT_ID}, ("agent_id",)),
            scopes=(WRITE,),
            read_only=False,
            destructive=False,
            run=_agent_action(agent_services.agent_start),
        ),
        Tool(
            name="agent_restart",
            title="Restart an agent",
            description="Stop the agent's runtime and boot it again (turns in flight are cut"
            " off; the workspace is kept)." + _TENANCY,
            input_schema=_object({"agent_id": _AGENT_ID}, ("agent_id",)),
            scopes=(WRITE,),
            read_only=False,
            destructive=True,
            run=_agent_action(agent_services.agent_restart),
        ),
        Tool(
            name="agent_delete",
            title="Delete an agent",
            description="Delete the agent: its sandbox and workspace are destroyed; its usage"
            " stays in the ledger. This cannot be undone." + _TENANCY,
            input_schema=_object({"agent_id": _AGENT_ID}, ("agent_id",)),
            scopes=(WRITE,),
            read_only=False,
            destructive=True,
            run=_agent_action(agent_services.agent_destroy, deleted=True),
        ),
        Tool(
            name="agent_logs",
            title="An agent's logs",
            description="The last lines of the agent runtime's log (its boot, its calls, its"
            " errors); empty when it never ran." + _TENANCY,
            input_schema=_object(
                {
                    "agent_id": _AGENT_ID,
                    "lines": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 200},
                },
                ("agent_id",),
            ),
            scopes=(READ,),
            read_only=True,
            destructive=False,
            run=_agent_logs,
        ),
        Tool(
            name="agents_stop_idle",
            title="Stop idle agents",
            description="Clean up: stop every running agent that has had no chat turn for more"
            " than idle_minutes (warm-pool agents are left alone). Yours; for operators"
            " everyone's, or one user's with user_id. Answers with the ids stopped.",
            input_schema=_object(
                {
                    "idle_minutes": {"type": "integer", "minimum": 1, "maximum": 525_600},
                    "user_id": _USERNAME,
                },
                ("idle_minutes",),
            ),
            scopes=(WRITE,),
            read_only=False,
            destructive=True,
            run=_agents_stop_idle,
        ),
        Tool(
            name="fleet_stats",
            title="Fleet statistics",
            description="Counts of agents by status, sessions (open and total), tokens and cost"
            " (US dollars, a decimal string): your own, or the whole fleet's for operators"
            " (scope says which).",
            input_schema=_object({}),
            scopes=(READ,),
            read_only=True,
            destructive=False,
            run=_fleet_stats,
        ),
        Tool(
            name="usage",
            title="Usage over a range",
            description="Requests, tokens and cost (US dollars, decimal strings) in [start, end)"
            " grouped by agent, model, day, hour or user; by default the last 30 days by day."
            " Your own usage; operators anyone's (user_id, a numeric user id) or everyone's.",
            input_schema=_object(
                {
                    "start": {"type": "string", "format": "date-time"},
                    "end": {"type": "string", "format": "date-time"},
                    "group_by": {
                        "type": "string",
                        "enum": ["agent", "model", "day", "hour", "user"],
                        "default": "day",
                    },
                    "tz": {
                        "type": "string",
                        "default": "UTC",
                        "description": "The days' time zone, e.g. Europe/Paris.",
                    },
                    "user_id": {"type": "integer", "minimum": 1},
                }
            ),
            scopes=(READ,),
            read_only=True,
            destructive=False,
            run=usage_listed,
        ),
        Tool(
            name="budgets",
            title="Budgets and what remains",
            description="Each spending budget in its current window: its metric, window, limit,"
            " what is used (calls in flight included) and what remains. Yours; operators may"
            " name a user.",
            input_schema=_object({"user_id": _USERNAME}),
            scopes=(READ,),
            read_only=True,
            destructive=False,
            run=_budgets,
        ),
        Tool(
            name="hosts",
            title="Sandbox hosts and free capacity",
            description="Operators: every sandbox host with its state (online, draining,"
            " offline), backend, agents, and vCPUs and memory (MiB) in capacity, used and free;"
            " its GPUs and MIG slices held of its capacity, and the free ones by model and MIG"
            " profile (what agent_spawn's gpus, gpu_model and gpu_profile can ask for).",
            input_schema=_object({}),
            scopes=(READ, ADMIN),
            read_only=True,
            destructive=False,
            run=_hosts,
        ),
        Tool(
            name="health",
            title="Health and readiness",
            description="Whether the console is live, and ready: its database, Celery broker,"
            " channel layer and Redis each answer ('ok' or the error).",
            input_schema=_object({}),
            scopes=(READ,),
            read_only=True,
            destructive=False,
            run=_health,
        ),
        Tool(
            name="scaling_rules_list",
            title="List scaling rules",
            description="Operators: the autoscaler's rules, one per agent pool (model and system"
            " prompt), with their bounds, thresholds, cooldowns and steps. Filter by enabled or"
            " model.",
            input_schema=_object(
                {"enabled": {"type": "boolean"}, "model": {"type": "string", "maxLength": 100}}
            ),
            scopes=(READ, ADMIN),
            read_only=True,
            destructive=False,
            run=_scaling_rules,
        ),
        Tool(
            name="scaling_simulate",
            title="Simulate a scaling rule",
            description="Operators: replay a load trace through a rule's settings, before"
            " saving them, and see every move it would make with its reason, and a summary"
            " (peak agents, utilization, agent-hours). Nothing is written. trace is a built-in"
            " shape ({'shape': 'spike'|'ramp'|'daily'|..., 'low', 'high', 'duration_seconds'})"
            " or {'csv': 'seconds,sessions' rows}; rule holds any of: "
            + ", ".join(POLICY_FIELDS)
            + ". Needs write, as its REST route (a POST) does.",
            input_schema=_object(
                {
                    "rule": {"type": "object", "description": "Unset settings: the defaults."},
                    "trace": {"type": "object"},
                    "start_agents": {"type": "integer", "minimum": 0},
                },
                ("trace",),
            ),
            scopes=(WRITE, ADMIN),
            read_only=True,
            destructive=False,
            run=_scaling_simulate,
        ),
        Tool(
            name="scaling_rule_update",
            title="Change a scaling rule",
            description="Operators: change some settings of a scaling rule (changes maps field"
            " to value: name, model, system_prompt, " + ", ".join(POLICY_FIELDS) + "). Checked"
            " against every invariant of a rule; recorded in the audit log. Try the settings"
            " with scaling_simulate first.",
            input_schema=_object(
                {
                    "rule_id": {"type": "integer", "minimum": 1},
                    "changes": {"type": "object", "minProperties": 1},
                },
                ("rule_id", "changes"),
            ),
            scopes=(WRITE, ADMIN),
            read_only=False,
            destructive=True,
            run=_scaling_rule_update,
        ),
        Tool(
            name="operator_approvals",
            title="Operator agents' calls awaiting approval",
            description="Operators: the tool calls of operator agents that wait for a person"
            " (destructive tools, spawns past the agent's limit, a cost impact above its"
            " threshold), oldest first: tool, arguments, the model's reasoning, the estimated"
            " cost impact (USD an hour), why it waits, and when it expires.",
            input_schema=_object(
                {"limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}}
            ),
            scopes=(READ, ADMIN),
            read_only=True,
            destructive=False,
            run=operator_approvals,
        ),
        Tool(
            name="operator_decide",
            title="Approve or deny an operator agent's call",
            description="Operators: approve (it runs, and its run carries on with the result)"
            " or deny (it never runs, and the agent's model is told) a call that"
            " operator_approvals lists. Recorded in the audit log.",
            input_schema=_object(
                {
                    "action_id": {"type": "integer", "minimum": 1},
                    "decision": {"type": "string", "enum": ["approve", "deny"]},
                },
                ("action_id", "decision"),
            ),
            scopes=(WRITE, ADMIN),
            read_only=False,
            destructive=False,
            run=operator_decide,
        ),
    )
}
