"""``/mcp``: the MCP server over Streamable HTTP, for callers with an API key or a JWT.

The SDK's session manager serves each request in a task group that its ``run()`` holds open,
and expects an ASGI lifespan to enter it; daphne runs no lifespan. So the manager runs in
stateless mode (each request a whole exchange: no session to keep in this process, so any web
process behind the load balancer can answer any request) and its task group is entered by a task
of the event loop that serves the first request, kept for the loop's life. A server started on
another loop (a test's) gets a manager of its own.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connections
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers

from console.models import User
from mcpserver.models import ToolCall
from mcpserver.server import CALLER_SCOPE_KEY, console_mcp_server
from mcpserver.services import Caller, caller_for_agent, caller_for_token
from plumbing.authentication import bearer_token_of
from plumbing.errors import NotAuthenticated, refusal_body

__all__ = ["MCP_PATHS", "McpHttpApp"]

MCP_PATHS = ("/mcp", "/mcp/")


async def _caller_of_request(ctx: ServerRequestContext[Any]) -> Caller | None:
    request = ctx.request
    return request.scope.get(CALLER_SCOPE_KEY) if request is not None else None


@dataclass(slots=True)
class _Running:
    manager: StreamableHTTPSessionManager
    ready: asyncio.Event
    task: asyncio.Task[None]


class McpHttpApp:
    """The ASGI app of ``/mcp``: authenticates each request as the REST API does (401 in the
    console's error shape without a valid credential), then hands it to the SDK's manager."""

    def __init__(self) -> None:
        self.server = console_mcp_server(_caller_of_request)
        self._running: dict[asyncio.AbstractEventLoop, _Running] = {}

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        # As Django serves an ASGI request: its sync code (the tools' queries) on a thread of
        # its own, whose database connection is closed as the request ends, so that one slow
        # call does not hold up the others.
        async with ThreadSensitiveContext():
            try:
                await self._serve(scope, receive, send)
            finally:
                await sync_to_async(connections.close_all)()

    async def _serve(self, scope, receive, send):  # type: ignore[no-untyped-def]
        token = bearer_token_of(Headers(scope=scope))
        try:
            if not token:
                raise NotAuthenticated(
                    "authentication is required: send Authorization: Bearer <API key or JWT>"
                )
            caller = await sync_to_async(caller_for_token)(token, transport=ToolCall.Transport.HTTP)
        except NotAuthenticated as exc:
            await _refuse(send, exc)
            return
        manager = await self._manager()
        await manager.handle_request({**scope, CALLER_SCOPE_KEY: caller}, receive, send)

    async def serve_as(self, owner: User, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        """Serve a request of an agent acting as its ``owner`` (``caller_for_agent``), whom the
        gateway has already authenticated."""
        caller = caller_for_agent(owner, transport=ToolCall.Transport.HTTP)
        async with ThreadSensitiveContext():
            try:
                manager = await self._manager()
                await manager.handle_request({**scope, CALLER_SCOPE_KEY: caller}, receive, send)
            finally:
                await sync_to_async(connections.close_all)()

    async def _manager(self) -> StreamableHTTPSessionManager:
        loop = asyncio.get_running_loop()
        running = self._running.get(loop)
        if running is None or running.task.done():
            manager = StreamableHTTPSessionManager(
                app=self.server, stateless=True, json_response=True
            )
            ready = asyncio.Event()

            async def hold() -> None:
                async with manager.run():
                    ready.set()
                    await asyncio.Event().wait()  # until the loop ends and cancels it

            running = self._running[loop] = _Running(manager, ready, loop.create_task(hold()))
        if not running.ready.is_set():
            started = asyncio.ensure_future(running.ready.wait())
            await asyncio.wait({started, running.task}, return_when=asyncio.FIRST_COMPLETED)
            if running.task.done():  # the manager failed to start: say why
                started.cancel()
                running.task.result()
        return running.manager


async def _refuse(send, exc: NotAuthenticated) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(refusal_body(exc)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in exc.headers().items()),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
