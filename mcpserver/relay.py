"""``/gateway/mcp/<server>``: an agent's MCP traffic, from its sandbox to the servers it was
given, and nowhere else.

The agent authenticates with its gateway token. A request for one of its servers is passed on
to that server's URL with the server's secret as its bearer token (the agent's token is not
passed on), and the answer (JSON or an SSE stream) streams back. Every connection resolves the
server's name afresh and refuses an address the console may not reach (``address_allowed``),
and redirects are not followed, so a server cannot point the console at its own network. The
console's own server (``console``) is served in this process as the agent's owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.helpers import is_ip_address
from aiohttp.resolver import DefaultResolver
from django.conf import settings
from django.db import DatabaseError
from yarl import URL

from agents.services.mcp import McpRoute, address_allowed, agent_mcp_route
from gateway.app import read_body
from gateway.threads import database_threads
from mcpserver.http import McpHttpApp
from plumbing.errors import ConsoleError, Forbidden, NotFound, refusal_body

__all__ = ["AGENT_MCP_PREFIX", "AgentMcpRelay"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("console.gateway.mcp")

AGENT_MCP_PREFIX = "/gateway/mcp/"
# What of a request reaches the server, and of its answer the agent: the protocol's own
# headers, never a credential of either side.
_REQUEST_HEADERS = (
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
)
_CREDENTIALS = (b"authorization", b"x-api-key")
_ANSWER_HEADERS = ("content-type", "mcp-session-id", "mcp-protocol-version", "cache-control")


class _Unreachable(ConsoleError):
    status, code = 502, "mcp_server_unreachable"


class GuardedResolver(AbstractResolver):
    """Resolves as aiohttp does, then keeps only addresses an agent's MCP server may be at;
    none left refuses the connection. The address checked is the one connected to."""

    def __init__(self) -> None:
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        kept = [entry for entry in found if address_allowed(host, entry["host"])]
        if not kept:
            raise OSError(f"{host} resolves to no address agents' MCP servers may be at")
        return kept

    async def close(self) -> None:
        await self._resolver.close()


async def _answer(send: Send, exc: ConsoleError) -> None:
    body = json.dumps(refusal_body(exc)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _token(headers: dict[str, str]) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip()


class AgentMcpRelay:
    """The ASGI app of ``/gateway/mcp/<server>``; ``console`` serves the console's own server."""

    def __init__(self, console: McpHttpApp) -> None:
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        name = scope["path"].removeprefix(AGENT_MCP_PREFIX).strip("/")
        try:
            if not name or "/" in name:
                raise NotFound("no such MCP server: use /gateway/mcp/<server name>")
            route = await database_threads.run(agent_mcp_route, token=_token(headers), name=name)
        except ConsoleError as exc:
            await _answer(send, exc)
            return
        except DatabaseError:
            await _answer(send, _Unreachable("the console's database is busy; try again"))
            return
        if route.console:
            # The agent's token stays here: the console's server is told who acts, not shown it.
            inner = [(k, v) for k, v in scope["headers"] if k.lower() not in _CREDENTIALS]
            await self.console.serve_as(route.owner, {**scope, "headers": inner}, receive, send)
            return
        try:
            body = await read_body(receive)
        except ConsoleError as exc:
            await _answer(send, exc)
            return
        if body is None:
            return
        forward = asyncio.ensure_future(_forward(route, scope["method"], headers, body, send))
        gone = asyncio.ensure_future(_gone(receive))
        await asyncio.wait({forward, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not forward.done():
            forward.cancel()  # the agent went away: so does the call to its server
        with contextlib.suppress(asyncio.CancelledError):
            await forward


async def _gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _forward(
    route: McpRoute, method: str, headers: dict[str, str], body: bytes, send: Send
) -> None:
    """Pass one request on to the agent's server and stream its answer back."""
    outgoing = {name: headers[name] for name in _REQUEST_HEADERS if name in headers}
    if route.secret:
        outgoing["authorization"] = f"Bearer {route.secret}"
    host = URL(route.url).host or ""
    if is_ip_address(host) and not address_allowed(host, host):
        # aiohttp connects to an address in the URL without asking the resolver.
        await _answer(
            send,
            _Unreachable(
                f"{route.name} is at an address agents' MCP servers may not be at",
                details={"server": route.name},
            ),
        )
        return
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=10, sock_read=settings.AGENT_MCP_TIMEOUT_SECONDS
    )
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(), force_close=True)
    started = False
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
    ) as http:
        try:
            async with http.request(
                method, route.url, data=body or None, headers=outgoing, allow_redirects=False
            ) as response:
                if 300 <= response.status < 400:
                    raise Forbidden(
                        f"{route.name} answered with a redirect, which is not followed",
                        details={"server": route.name, "status": response.status},
                    )
                answer = [
                    (name.encode(), response.headers[name].encode("latin-1"))
                    for name in _ANSWER_HEADERS
                    if name in response.headers
                ]
                if "content-encoding" in response.headers:
                    answer.append(
                        (b"content-encoding", response.headers["content-encoding"].encode())
                    )
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": answer}
                )
                started = True
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ConsoleError as exc:
            await _answer(send, exc)
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("agent %s: MCP server %s unreachable: %r", route.agent_id, route.name, exc)
            if not started:
                await _answer(
                    send,
                    _Unreachable(
                        f"the MCP server {route.name} could not be reached: {exc}",
                        details={"server": route.name},
                    ),
                )
                return
    await send({"type": "http.response.body", "body": b""})
