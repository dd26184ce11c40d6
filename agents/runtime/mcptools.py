"""The tools of the MCP servers an agent was given, offered to Claude as ``<server>__<tool>``.

``AGENT_MCP_SERVERS`` names the servers (a comma list); each is reached through the gateway at
``<AGENT_GATEWAY_URL>/mcp/<server>`` with the agent's gateway token, over the sandbox's one way
out, and the gateway adds the server's own credential. Their tools are listed before the first
turn that needs them (again at the next turn when a server did not answer), and each call opens
a session of its own: a server that keeps state between calls does not see it kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from agents.runtime.config import ConfigError, GatewayRoute
from agents.runtime.tools import ToolResult

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["McpTools", "mcp_servers_from_env"]

log = logging.getLogger("agents.runtime.mcp")

SEPARATOR = "__"
_NAME = re.compile(r"\A[a-z][a-z0-9-]{0,29}\Z")
# Claude's bound on a tool's name.
_TOOL_NAME = re.compile(r"\A[a-zA-Z0-9_-]{1,64}\Z")
LIST_TIMEOUT = 20.0


def mcp_servers_from_env() -> tuple[str, ...]:
    raw = os.environ.get("AGENT_MCP_SERVERS", "")
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    if bad := [n for n in names if not _NAME.match(n)]:
        raise ConfigError(f"AGENT_MCP_SERVERS names servers that cannot be: {', '.join(bad)}")
    return names


def _text_of(result: Any) -> str:
    """A call's content as text: text blocks as they are, any other kind as its JSON."""
    parts = []
    for block in result.content:
        if getattr(block, "type", "") == "text":
            parts.append(block.text)
        else:
            parts.append(json.dumps(block.model_dump(mode="json", exclude_none=True)))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


class McpTools:
    """The agent's MCP servers: their tools' definitions for the gateway, and how to call them."""

    def __init__(
        self,
        servers: tuple[str, ...],
        gateway: GatewayRoute,
        token: str,
        *,
        output_limit: int,
        timeout: float,
    ) -> None:
        self.servers, self.gateway, self._token = servers, gateway, token
        self.output_limit, self.timeout = output_limit, timeout
        self._tools: dict[str, tuple[str, str]] = {}  # Claude's name: (server, tool)
        self._definitions: list[dict[str, Any]] = []
        self._listed: set[str] = set()
        self._lock = asyncio.Lock()

    @property
    def definitions(self) -> list[dict[str, Any]]:
        return list(self._definitions)

    def knows(self, name: str) -> bool:
        return name in self._tools

    @asynccontextmanager
    async def _client(self, server: str) -> AsyncIterator[Client]:
        # The MCP client is loaded only by an agent given MCP servers: the microVM guest, whose
        # image carries the runtime's own dependencies only, boots every other agent as before.
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        headers = {"Authorization": f"Bearer {self._token}"}
        if self.gateway.host_header:
            headers["Host"] = self.gateway.host_header
        transport = httpx2.AsyncHTTPTransport(uds=self.gateway.socket or None)
        extensions = {"sni_hostname": self.gateway.tls_name} if self.gateway.tls_name else None

        async def name_the_gateway(request: httpx2.Request) -> None:
            if extensions:
                request.extensions.update(extensions)

        async with httpx2.AsyncClient(
            headers=headers,
            transport=transport,
            timeout=httpx2.Timeout(self.timeout, connect=10.0),
            trust_env=False,
            event_hooks={"request": [name_the_gateway]},
        ) as http:
            url = f"{self.gateway.url}/mcp/{server}"
            stream = streamable_http_client(url, http_client=http)
            async with Client(stream, mode="legacy", cache=None) as client:  # type: ignore[arg-type]
                yield client

    async def prepare(self) -> None:
        """List the tools of every server not listed yet; one that fails is tried next time."""
        async with self._lock:
            for server in self.servers:
                if server in self._listed:
                    continue
                try:
                    async with asyncio.timeout(LIST_TIMEOUT), self._client(server) as client:
                        tools, cursor = [], None
                        while True:
                            page = await client.list_tools(cursor=cursor)
                            tools.extend(page.tools)
                            if not (cursor := page.next_cursor):
                                break
                except Exception as exc:
                    log.warning("MCP server %s: its tools could not be listed: %r", server, exc)
                    continue
                self._listed.add(server)
                for tool in tools:
                    name = f"{server}{SEPARATOR}{tool.name}"
                    if not _TOOL_NAME.match(name):
                        log.warning("MCP server %s: tool %r left out: its name", server, tool.name)
                        continue
                    self._tools[name] = (server, tool.name)
                    self._definitions.append(
                        {
                            "name": name,
                            "description": tool.description or tool.title or tool.name,
                            "input_schema": tool.input_schema,
                        }
                    )
                log.info("MCP server %s: %d tools", server, len(tools))

    async def run(self, name: str, tool_input: dict[str, Any]) -> ToolResult:
        server, tool = self._tools[name]
        try:
            async with asyncio.timeout(self.timeout), self._client(server) as client:
                result = await client.call_tool(tool, tool_input)
        except Exception as exc:
            return ToolResult(f"{name}: the MCP server failed: {exc!r}"[:2000], is_error=True)
        output = _text_of(result)
        if len(output) > self.output_limit:
            output = output[: self.output_limit] + (
                f"\n[output truncated: {len(output)} characters, the first "
                f"{self.output_limit} shown]"
            )
        return ToolResult(output, is_error=bool(result.is_error))
