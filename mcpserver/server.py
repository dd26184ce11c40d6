"""The MCP server (the SDK's low-level ``Server``): it lists the tools and resources, and runs a
call as its caller, whom the transport names (``CALLER_SCOPE_KEY`` in the HTTP request's scope,
or the key given to ``mcp_stdio``).

A refusal (a scope the credential lacks, another tenant's agent, bad arguments, a quota) is the
tool's error, ``isError`` with the console's error body, so that a model reads it and can act on
it; it is never a protocol failure. Every call is recorded (``ToolCall``) with its outcome.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jsonschema
import mcp_types as types
from asgiref.sync import async_to_sync, sync_to_async
from django.core.serializers.json import DjangoJSONEncoder
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from console.models import ApiKey
from mcpserver.services import Caller, caller_admit, tool_call_record
from mcpserver.tools import TOOLS, Tool, agents_listed, usage_listed
from plumbing.errors import BadRequest, ConsoleError, NotAuthenticated, NotFound, refusal_body

__all__ = ["CALLER_SCOPE_KEY", "RESOURCES", "CallerOf", "console_mcp_server", "tool_run"]

log = logging.getLogger(__name__)

CALLER_SCOPE_KEY = "console.mcp_caller"
INSTRUCTIONS = (
    "Agent Console hosts Claude agents in sandboxes. These tools spawn, inspect, stop and delete"
    " agents, read usage, budgets and the fleet's health, and (operators) read hosts and tune"
    " the autoscaler. A refused call answers with isError and the console's error body"
    " {'error': {'code', 'message', 'details'}}: read its message and act on it."
)

# Who is calling, for a request's context; None: nobody the server can name.
CallerOf = Callable[[ServerRequestContext[Any]], Awaitable[Caller | None]]

RESOURCES = {
    "console://agents": (
        "Agents",
        "The agents the caller may see, newest first (as the agents_list tool answers).",
    ),
    "console://usage/summary": (
        "Usage summary",
        "The caller's usage of the last 30 days by model (operators: everyone's).",
    ),
}


def _json(value: Any) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False)


def _with_defaults(tool: Tool, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` checked against the tool's input schema, with its defaults filled in."""
    try:
        jsonschema.validate(arguments, tool.input_schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "arguments"
        raise BadRequest(f"{where}: {exc.message}", details={where: [exc.message]}) from None
    found = dict(arguments)
    for name, schema in tool.input_schema["properties"].items():
        if name not in found and "default" in schema:
            found[name] = schema["default"]
    return found


def _tool_of(name: str) -> Tool:
    tool = TOOLS.get(name)
    if tool is None:
        raise NotFound(f"no tool {name!r}", details={"tool": name, "tools": sorted(TOOLS)})
    return tool


async def _run(caller: Caller, tool: Tool, arguments: Mapping[str, Any]) -> Any:
    await sync_to_async(caller_admit)(caller, scopes=tool.scopes)
    args = _with_defaults(tool, arguments)
    if inspect.iscoroutinefunction(tool.run):
        return await tool.run(caller, args)
    return await sync_to_async(tool.run)(caller, args)


def tool_run(caller: Caller, tool: Tool, arguments: Mapping[str, Any]) -> Any:
    """Run ``tool`` as ``caller`` from sync code, as a call over MCP runs: its scopes and the
    caller's request rate, its arguments against its schema, then the tool. Refusals raise
    ``ConsoleError``."""
    caller_admit(caller, scopes=tool.scopes)
    args = _with_defaults(tool, arguments)
    if inspect.iscoroutinefunction(tool.run):
        return async_to_sync(tool.run)(caller, args)
    return tool.run(caller, args)


def _listed(tool: Tool) -> types.Tool:
    return types.Tool(
        name=tool.name,
        title=tool.title,
        description=tool.description,
        input_schema=tool.input_schema,
        annotations=types.ToolAnnotations(
            title=tool.title,
            read_only_hint=tool.read_only,
            destructive_hint=tool.destructive,
            idempotent_hint=tool.read_only,
            open_world_hint=False,
        ),
    )


def _refused(exc: ConsoleError) -> types.CallToolResult:
    """A refusal as the tool's answer: ``isError``, with the console's error body."""
    text = _json(refusal_body(exc))
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=json.loads(text), is_error=True
    )


async def _recorded(
    caller: Caller,
    name: str,
    arguments: Mapping[str, Any],
    began: float,
    error: tuple[str, str] | None,
) -> None:
    await sync_to_async(tool_call_record)(
        caller=caller,
        tool=name,
        arguments=arguments,
        error=error,
        duration_ms=round((time.perf_counter() - began) * 1000),
    )


def console_mcp_server(caller_of: CallerOf) -> Server[Any]:
    """The console's MCP server, whose calls run as ``caller_of`` names their caller."""

    async def caller(ctx: ServerRequestContext[Any]) -> Caller:
        found = await caller_of(ctx)
        if found is None:  # over stdio, a key revoked or expired since the server started
            raise NotAuthenticated("the API key is unknown, revoked or expired")
        return found

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[_listed(tool) for tool in TOOLS.values()])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            who = await caller(ctx)
        except NotAuthenticated as exc:
            return _refused(exc)
        arguments = params.arguments or {}
        began = time.perf_counter()
        try:
            result = await _run(who, _tool_of(params.name), arguments)
        except ConsoleError as exc:
            await _recorded(who, params.name, arguments, began, (exc.code, exc.message))
            return _refused(exc)
        except Exception as exc:
            # recorded, then the SDK answers it as a failure
            await _recorded(who, params.name, arguments, began, ("error", type(exc).__name__))
            raise
        await _recorded(who, params.name, arguments, began, None)
        text = _json(result)
        return types.CallToolResult(
            content=[types.TextContent(text=text)], structured_content=json.loads(text)
        )

    async def list_resources(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=uri, name=name, title=name, description=text, mime_type="application/json"
                )
                for uri, (name, text) in RESOURCES.items()
            ]
        )

    async def read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        try:
            who = await caller(ctx)
        except NotAuthenticated as exc:
            raise MCPError(code=types.INVALID_REQUEST, message=exc.message) from exc
        uri = str(params.uri)
        tool = {"console://agents": "agents_list", "console://usage/summary": "usage"}.get(uri)
        began = time.perf_counter()
        try:
            if tool is None:
                raise NotFound(f"no resource {uri!r}", details={"uri": uri})
            arguments = {"group_by": "model"} if tool == "usage" else {}
            await sync_to_async(caller_admit)(who, scopes=(ApiKey.Scope.READ.value,))
            read = agents_listed if tool == "agents_list" else usage_listed
            result = await sync_to_async(read)(who, _with_defaults(TOOLS[tool], arguments))
        except ConsoleError as exc:
            await _recorded(who, uri, {}, began, (exc.code, exc.message))
            raise MCPError(
                code=types.INVALID_PARAMS if isinstance(exc, NotFound) else types.INVALID_REQUEST,
                message=exc.message,
                data=refusal_body(exc)["error"],
            ) from exc
        await _recorded(who, uri, {}, began, None)
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri=uri, mime_type="application/json", text=_json(result)
                )
            ]
        )

    return Server(
        "agent-console",
        title="Agent Console",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )
