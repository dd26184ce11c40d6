"""The agent relay: serves this sandbox host's agents to the console's other machines over TCP.

``GET|POST|PUT|DELETE /<agent id>/<path>`` goes to that agent's runtime (its Unix socket, or its
microVM's loopback port), streamed both ways without buffering a request or a reply, so a chat
turn's SSE passes as it is written and a workspace upload as it is sent;
``GET /<agent id>/logs?lines=N`` answers the last lines of the runtime's log. Only
agents the database places on this host are served (any other is a 404), and only to requests
that carry a token of the deployment's key for that agent and request (``wire/relaytoken.py``):
any other is a 401 in the console's error shape, logged with its peer's address.

``GET /metrics`` answers the metrics of this machine's processes (the worker's spawns, the
relay's own), for Prometheus, to the METRICS_BEARER_TOKEN only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from django.db import close_old_connections
from prometheus_client import CONTENT_TYPE_LATEST

from agents import sandbox
from agents.models import Agent
from plumbing.database import database_sync_to_async
from plumbing.errors import error_body
from plumbing.metrics import machine_metrics
from vmdriver import SandboxNotFound, VmState
from wire import relaytoken, turns

__all__ = ["relay_app"]

log = logging.getLogger(__name__)

# The bound on a body the relay reads whole, the runtime's own (a chat turn that carries a
# session's history back). Bodies are streamed to the runtime, which bounds what it reads, and
# an upload by the limits the console sends with it.
_MAX_BODY_BYTES = turns.HISTORY_MAX_BYTES + 64 * 1024
_MAX_LOG_LINES = 1000
# Not passed on: the connection's own, and the relay's token.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        relaytoken.HEADER.lower(),
    }
)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refusal(status: int, code: str, message: str) -> web.Response:
    return web.json_response(error_body(code, message), status=status)


def _log_refusal(request: web.Request, reason: str) -> None:
    log.warning(
        "agent relay: refused %s %s from %s: %s",
        request.method,
        request.path,
        request.remote,
        reason,
    )


def _sandbox_of(agent_id: str, host_name: str) -> str | None:
    """The sandbox of the agent if the database places it on this host, else None."""
    close_old_connections()  # one a database restart has closed is not used again
    return (
        Agent.objects.filter(pk=agent_id, host__name=host_name)
        .exclude(sandbox_id="")
        .values_list("sandbox_id", flat=True)
        .first()
    )


def _local_endpoint(sandbox_id: str) -> str:
    """Where the sandbox's runtime listens on this host; "" when it is not running."""
    try:
        status = sandbox.driver().status(sandbox_id)
    except SandboxNotFound:
        return ""
    return status.endpoint if status.state == VmState.RUNNING else ""


class _Relay:
    def __init__(
        self, *, key: str, host_name: str, token_seconds: float, timeout: float, metrics_token: str
    ) -> None:
        self.key = key
        self.host_name = host_name
        self.token_seconds = token_seconds
        self.timeout = timeout
        self.metrics_token = metrics_token

    @web.middleware
    async def authenticate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path == "/metrics":
            return await self.metrics(request)
        agent_id = request.path.lstrip("/").partition("/")[0]
        try:
            uuid.UUID(agent_id)
        except ValueError:
            _log_refusal(request, "not an agent's path")
            return _refusal(404, "not_found", "no such route")
        reason = relaytoken.token_check(
            self.key,
            request.headers.get(relaytoken.HEADER, ""),
            agent_id=agent_id,
            method=request.method,
            path=request.raw_path,
            ttl=self.token_seconds,
        )
        if reason:
            _log_refusal(request, reason)
            return _refusal(401, "not_authenticated", "a valid relay token is required")
        return await handler(request)

    async def _sandbox(self, request: web.Request) -> str | None:
        """The sandbox of the request's agent; None (and logged) when it is not this host's."""
        sandbox_id = await database_sync_to_async(_sandbox_of)(
            request.match_info["agent_id"], self.host_name
        )
        if sandbox_id is None:
            _log_refusal(request, f"not an agent of host {self.host_name}")
        return sandbox_id

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return _refusal(405, "method_not_allowed", "GET only")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else ""
        if not self.metrics_token or not hmac.compare_digest(
            presented.encode(), self.metrics_token.encode()
        ):
            _log_refusal(request, "no metrics bearer token")
            return _refusal(401, "not_authenticated", "the metrics bearer token is required")
        body = await asyncio.to_thread(machine_metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        if (sandbox_id := await self._sandbox(request)) is None:
            return _refusal(404, "agent_not_found", "no such agent on this host")
        lines = request.query.get("lines", "200")
        if not lines.isdigit() or not 1 <= int(lines) <= _MAX_LOG_LINES:
            return _refusal(400, "invalid_request", f"lines must be 1 to {_MAX_LOG_LINES}")
        try:
            text = await database_sync_to_async(sandbox.driver().logs)(sandbox_id, lines=int(lines))
        except SandboxNotFound:
            text = ""
        return web.Response(text=text, content_type="text/plain")

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        if (sandbox_id := await self._sandbox(request)) is None:
            return _refusal(404, "agent_not_found", "no such agent on this host")
        endpoint = await database_sync_to_async(_local_endpoint)(sandbox_id)
        if not endpoint:
            return _refusal(409, "agent_not_running", "the agent's sandbox is not running")
        path = request.raw_path.removeprefix("/" + request.match_info["agent_id"])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if request.content_length is not None:  # passed on, so the runtime can refuse early
            headers["Content-Length"] = str(request.content_length)
        body = request.content if request.body_exists else None
        # A client per request, as the console opens one per turn: none outlives its sandbox.
        async with sandbox.runtime_session(endpoint, timeout=self.timeout) as client:
            try:
                upstream = await client.request(request.method, path, data=body, headers=headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return _refusal(
                    502, "agent_unavailable", f"the agent's runtime could not be reached: {exc}"
                )
            async with upstream:
                response = web.StreamResponse(
                    status=upstream.status,
                    headers={
                        k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
                    },
                )
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
        return response


def relay_app(
    *, key: str, host_name: str, token_seconds: float, timeout: float, metrics_token: str = ""
) -> web.Application:
    """The relay of the sandbox host ``host_name``: requests need a token of ``key`` living at
    most ``token_seconds``; ``timeout`` bounds a runtime's connect and each of its reads;
    ``/metrics`` needs ``metrics_token`` (none set: it is refused)."""
    if not key:
        raise ValueError("an agent relay needs a key (SANDBOX_RELAY_KEY)")
    relay = _Relay(
        key=key,
        host_name=host_name,
        token_seconds=token_seconds,
        timeout=timeout,
        metrics_token=metrics_token,
    )
    app = web.Application(middlewares=[relay.authenticate], client_max_size=_MAX_BODY_BYTES)
    app.router.add_get("/{agent_id}/logs", relay.logs)
    for method in ("GET", "POST", "PUT", "DELETE"):
        app.router.add_route(method, "/{agent_id}/{path:.+}", relay.proxy)
    return app
