"""A run of an operator agent: Claude, called through the console's own gateway as the agent's
service account (so its calls are in the ledger and its daily budget stops it), with the tools
the agent may use, each call recorded with the model's reasoning.

A call that needs a person's approval is recorded as waiting and the run pauses; once every
waiting call is decided (or expired) ``operator_run_continue`` carries it on: an approved call
runs and the model reads its result, a denied or expired one never runs and the model is told.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import anthropic
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from console.models import ApiKey
from console.services import api_key_create, api_key_revoke, role_scopes
from mcpserver.server import tool_run
from mcpserver.services import Caller
from mcpserver.tools import TOOLS, Tool
from operator_agent import selectors, services
from operator_agent.models import OperatorAction, OperatorAgent, OperatorRun
from plumbing.errors import ConsoleError, refusal_body

__all__ = [
    "OPERATOR_TOOLS",
    "approval_reason",
    "cost_impact",
    "operator_run_continue",
    "tools_need_admin",
]

Json = dict[str, Any]
Status = OperatorAction.Status

# An operator agent never decides approvals, its own or another's.
OPERATOR_TOOLS: dict[str, Tool] = {
    name: tool
    for name, tool in TOOLS.items()
    if name not in {"operator_approvals", "operator_decide"}
}

_OPENING = (
    "It is {now:%Y-%m-%d %H:%M} UTC. Do your routine now with the tools you have. Before each"
    " tool call, say in a sentence or two why you make it. Some calls wait for a person's"
    " approval; a call denied or expired did not run. End with a short report of what you"
    " found and did."
)
_POLICY = (
    "\n\nYou act on Agent Console, which hosts Claude agents in sandboxes, through its tools."
    " Destructive calls, spawns beyond your limit and calls with a large cost impact wait for an"
    " operator's approval. Your calls to Claude are capped at ${cap} a day."
)


class _Stop(Exception):
    """The run ends here, with this status and summary."""

    def __init__(self, status: str, summary: str) -> None:
        super().__init__(summary)
        self.status = status
        self.summary = summary


def tools_need_admin(names: list[str]) -> bool:
    """Whether one of the tools ``names`` is for operators only."""
    admin = ApiKey.Scope.ADMIN.value
    return any(admin in OPERATOR_TOOLS[name].scopes for name in names if name in OPERATOR_TOOLS)


def _caller(agent: OperatorAgent, key: ApiKey) -> Caller:
    """The agent's account, with the scopes its allowed tools need and no more."""
    needed = {
        scope
        for name in agent.allowed_tools
        if name in OPERATOR_TOOLS
        for scope in OPERATOR_TOOLS[name].scopes
    }
    return Caller(
        user=agent.user,
        key=key,
        scopes=frozenset(needed) & role_scopes(agent.user),
        transport="operator",
    )


def cost_impact(tool: str, args: Mapping[str, Any]) -> Decimal:
    """A call's estimated effect on spend, in USD an hour: an agent it boots adds what an agent
    of its model costs an hour (``agent_hour_cost``), one it stops or deletes takes it away;
    anything else, nothing."""
    if tool == "agent_spawn":
        return selectors.agent_hour_cost(model=args.get("model") or settings.DEFAULT_AGENT_MODEL)
    sign = {"agent_start": 1, "agent_stop": -1, "agent_delete": -1}.get(tool)
    if sign is None:
        return Decimal(0)
    try:
        agent_id = str(uuid.UUID(str(args.get("agent_id"))))
    except ValueError:  # the tool refuses it when it runs
        return Decimal(0)
    return sign * selectors.agent_hour_cost_of(agent_id=agent_id)


def approval_reason(agent: OperatorAgent, run: OperatorRun, tool: Tool, impact: Decimal) -> str:
    """Why a call must wait for a person (empty: it need not): a destructive tool, a spawn past
    the agent's number for one run, or a cost impact above its threshold."""
    if tool.destructive:
        return f"{tool.name} is destructive"
    if tool.name == "agent_spawn":
        asked = run.actions.filter(tool="agent_spawn", status__in=_COUNTED_SPAWNS).count()
        if asked + 1 > agent.spawn_approval_over:
            return (
                f"spawn {asked + 1} of this run; more than {agent.spawn_approval_over} need"
                " approval"
            )
    if impact > agent.cost_approval_over_usd_per_hour:
        return (
            f"cost impact ${impact.normalize():f}/h is above"
            f" ${agent.cost_approval_over_usd_per_hour.normalize():f}/h"
        )
    return ""


_COUNTED_SPAWNS = (Status.EXECUTED, Status.PENDING, Status.APPROVED)


def _error(code: str, message: str) -> Json:
    return {"error": {"code": code, "message": message, "details": {}}}


def _json(value: Any) -> Any:
    """``value`` as JSON holds it (decimals and instants as strings)."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _execute(agent: OperatorAgent, caller: Caller, tool: Tool, args: Json) -> tuple[str, Json]:
    """Run one call within the agent's rate: its status and result (an error's body when it was
    refused or failed)."""
    try:
        services.operator_tool_call_admit(agent=agent)
        return Status.EXECUTED, _json(tool_run(caller, tool, args))
    except ConsoleError as exc:
        return Status.FAILED, refusal_body(exc)
    except Exception as exc:  # a tool's own failure: the model reads it, the run goes on
        return Status.FAILED, _error("tool_failed", f"{type(exc).__name__}: {exc}"[:500])


def _act(run: OperatorRun, caller: Caller, uses: list[Json], reasoning: str) -> bool:
    """Record each of a reply's tool calls: run those that need no approval, hold the others.
    Whether any now waits for a person."""
    agent = run.agent
    waiting = False
    for use in uses:
        name, args = use["name"], use.get("input") or {}
        record = {"run": run, "tool_use_id": use["id"], "tool": name, "arguments": args}
        tool = OPERATOR_TOOLS.get(name)
        if tool is None or name not in agent.allowed_tools:
            services.operator_action_record(
                **record,
                reasoning=reasoning,
                status=Status.REFUSED,
                result=_error("tool_not_allowed", f"{name} is not one of this agent's tools"),
            )
            continue
        impact = cost_impact(name, args)
        why = approval_reason(agent, run, tool, impact)
        if why:
            services.operator_action_record(
                **record,
                reasoning=reasoning,
                status=Status.PENDING,
                cost_impact=impact,
                approval_reason=why,
            )
            waiting = True
            continue
        status, result = _execute(agent, caller, tool, args)
        services.operator_action_record(
            **record, reasoning=reasoning, status=status, result=result, cost_impact=impact
        )
    return waiting


def _decided(run: OperatorRun, caller: Caller) -> None:
    """Run the calls approved since the run paused."""
    for action in run.actions.filter(status=Status.APPROVED).order_by("at", "pk"):
        status, result = _execute(run.agent, caller, OPERATOR_TOOLS[action.tool], action.arguments)
        services.operator_action_done(action=action, status=status, result=result)


def _answers(run: OperatorRun, uses: list[Json]) -> list[Json]:
    """The tool results for a reply's calls, as the model reads them."""
    actions = {
        a.tool_use_id: a for a in run.actions.filter(tool_use_id__in=[u["id"] for u in uses])
    }
    answers = []
    for use in uses:
        action = actions[use["id"]]
        if action.status == Status.DENIED:
            who = action.decided_by.get_username() if action.decided_by else "an operator"
            result = _error("denied", f"denied by {who}; the call did not run")
        elif action.status == Status.EXPIRED:
            result = _error("expired", "nobody approved the call in time (expired); it did not run")
        else:
            result = action.result
        answers.append(
            {
                "type": "tool_result",
                "tool_use_id": use["id"],
                "content": json.dumps(result, ensure_ascii=False),
                "is_error": action.status != Status.EXECUTED,
            }
        )
    return answers


def _tool_uses(message: Json) -> list[Json]:
    return [block for block in message["content"] if block.get("type") == "tool_use"]


def _ask(client: anthropic.Anthropic, agent: OperatorAgent, messages: list[Json]) -> Json:
    """The model's next reply, as the message to keep; a refusal ends the run."""
    try:
        reply = client.messages.create(
            model=agent.model,
            max_tokens=settings.OPERATOR_MAX_TOKENS,
            system=agent.instructions + _POLICY.format(cap=agent.daily_usd_cap.normalize()),
            tools=[
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for name, t in OPERATOR_TOOLS.items()
                if name in agent.allowed_tools
            ],
            messages=messages,
        )
    except anthropic.APIStatusError as exc:
        error = exc.body.get("error", {}) if isinstance(exc.body, dict) else {}
        message = str(error.get("message") or exc.message)
        if error.get("code") == "budget_exceeded":
            raise _Stop(
                OperatorRun.Status.STOPPED_BY_CAP, f"Stopped by the daily cap: {message}"
            ) from exc
        raise _Stop(
            OperatorRun.Status.FAILED, f"Claude refused the call ({exc.status_code}): {message}"
        ) from exc
    except anthropic.APIError as exc:  # the gateway unreachable, a timeout
        raise _Stop(OperatorRun.Status.FAILED, f"Claude could not be reached: {exc}") from exc
    content: list[Json] = []
    for block in reply.content:
        if block.type == "text":
            content.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
    return {"role": "assistant", "content": content, "stop_reason": reply.stop_reason}


def _text(message: Json) -> str:
    return "\n".join(b["text"] for b in message["content"] if b.get("type") == "text").strip()


def _converse(run: OperatorRun, client: anthropic.Anthropic, caller: Caller) -> None:
    messages = run.messages
    if messages[-1]["role"] == "assistant":  # resumed: the held calls are decided
        _decided(run, caller)
        messages.append({"role": "user", "content": _answers(run, _tool_uses(messages[-1]))})
    for _ in range(settings.OPERATOR_MAX_STEPS):
        reply = _ask(client, run.agent, messages)
        stop_reason = reply.pop("stop_reason")
        messages.append(reply)
        uses = _tool_uses(reply)
        if stop_reason != "tool_use" or not uses:
            raise _Stop(OperatorRun.Status.COMPLETED, _text(reply) or "The run ended.")
        if _act(run, caller, uses, _text(reply)):
            services.operator_run_save(run=run, messages=messages, waiting=True)
            return
        messages.append({"role": "user", "content": _answers(run, uses)})
        services.operator_run_save(run=run, messages=messages)
    raise _Stop(
        OperatorRun.Status.COMPLETED,
        f"Ended after {settings.OPERATOR_MAX_STEPS} steps, the most a run may take.",
    )


def operator_run_continue(*, run_id: int) -> OperatorRun | None:
    """Carry a run on as far as it goes: to its end, or to calls that wait for approval. None
    when there is nothing to carry on."""
    opening = [{"role": "user", "content": _OPENING.format(now=timezone.now())}]
    run = services.operator_run_claim(run_id=run_id, opening=opening)
    if run is None:
        return None
    agent = run.agent
    # A key of its own for this stretch of the run, that ends with it.
    key, raw = api_key_create(
        user=agent.user,
        name=f"operator run {run.pk}",
        scopes=[ApiKey.Scope.WRITE.value],
        expires_at=timezone.now() + timedelta(seconds=settings.OPERATOR_RUN_STALE_SECONDS),
    )
    client = anthropic.Anthropic(
        base_url=settings.GATEWAY_URL,
        api_key=raw,
        max_retries=0,
        timeout=settings.OPERATOR_CALL_TIMEOUT_SECONDS,
    )
    try:
        _converse(run, client, _caller(agent, key))
    except _Stop as stop:
        services.operator_run_finish(run=run, status=stop.status, summary=stop.summary)
    except Exception as exc:
        services.operator_run_finish(
            run=run, status=OperatorRun.Status.FAILED, summary=f"The run broke: {exc!r}"[:500]
        )
        raise
    finally:
        client.close()
        api_key_revoke(key=key)
    return run
