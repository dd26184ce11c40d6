"""ASGI entry points.

``application`` (daphne, the web process): HTTP through Django (the LLM gateway and the MCP
server at ``/mcp`` through their own apps), WebSockets through Channels.
``gateway_application`` (uvicorn, the gateway process that agents call): the same HTTP routes,
no WebSockets.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.db import connections
from django.http import HttpRequest, HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)


class RequestThreads:
    """Threads for requests' sync work, each serving one request at a time and kept for the
    next: Django's handler starts a thread for every request and ends it after, and the
    request's database connection with it, ~0.7 ms of CPU a request (the thread, and on SQLite
    a connection opened afresh). A request's connection is still closed as it ends where
    ``CONN_MAX_AGE`` says so (a pooled PostgreSQL connection goes back to the pool)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep  # idle threads kept; past that, a returned one ends
        self._idle: list[ThreadPoolExecutor] = []
        self._lock = threading.Lock()

    def take(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(executor)
                return
        executor.submit(connections.close_all)
        executor.shutdown(wait=False)

    def close(self) -> None:
        """Close the idle threads' connections, then the threads (at shutdown, and in tests)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for executor in idle:
            executor.submit(connections.close_all).result()
            executor.shutdown()


request_threads = RequestThreads(keep=64)


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the whole request (middleware, view, rendering) run in sync
    mode in one hop to the request's thread, one of ``request_threads``.

    Django's own runs its middleware chain in async mode, and then every sync step beneath it
    (CSRF's ``process_view``, the view, a template response's rendering) in a hop of its own to
    that thread and back, each ~0.2 ms of CPU: most of a small API request. An async view still
    runs on the event loop (Django hands it back there), while the request's thread waits."""

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            raise ValueError(f"Django serves HTTP here, not {scope['type']}")
        executor = request_threads.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            request_threads.give_back(executor)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


django_asgi_app = OneHopASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402 - needs Django set up first
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import WebsocketDenier  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402

from agents.models import ServingProcess  # noqa: E402
from agents.routing import websocket_urlpatterns  # noqa: E402
from agents.services.processes import heartbeat_start  # noqa: E402
from gateway.app import GatewayApp  # noqa: E402
from mcpserver.http import MCP_PATHS, McpHttpApp  # noqa: E402
from mcpserver.relay import AGENT_MCP_PREFIX, AgentMcpRelay  # noqa: E402
from plumbing.reason_phrases import fill_twisted_reason_phrases  # noqa: E402

fill_twisted_reason_phrases()  # under daphne: "429 Too Many Requests", not "Unknown Status"


def _sqlite_kept_open(sender: object, **kwargs: object) -> None:
    if isinstance(sender, type) and issubclass(sender, ASGIHandler):
        _sqlite_keep_open()


_sqlite_kept: list[sqlite3.Connection] = []


def _sqlite_keep_open() -> None:
    """On SQLite, hold one idle connection to the database for the process's life (opened by
    its first request). The connection a request closes is then never the database's last: the
    last one to close checkpoints the write-ahead log into the database and deletes it, and the
    next to open builds its index afresh, ~0.8 ms of CPU a request, half the API's budget."""
    if _sqlite_kept or connections["default"].vendor != "sqlite":
        return
    name = str(connections["default"].settings_dict["NAME"])
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    with contextlib.suppress(sqlite3.Error):  # not there (yet): the next request tries again
        kept = sqlite3.connect(f"file:{name}?mode=rw", uri=True, check_same_thread=False)
        kept.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opens the log
        _sqlite_kept.append(kept)


request_finished.connect(_sqlite_kept_open)

GATEWAY_PATH = "/gateway/v1/messages"
_gateway = GatewayApp()
_mcp = McpHttpApp()
_agent_mcp = AgentMcpRelay(_mcp)


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """The gateway's routes and the MCP server's go to their own apps; the rest to Django."""
    if scope["path"] == GATEWAY_PATH:
        await _gateway(scope, receive, send)
    elif scope["path"].startswith(AGENT_MCP_PREFIX):
        await _agent_mcp(scope, receive, send)
    elif scope["path"] in MCP_PATHS:
        await _mcp(scope, receive, send)
    else:
        await django_asgi_app(scope, receive, send)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` as (scheme, host, port), default ports filled in; or None."""
    scheme, sep, rest = url.strip().lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or not rest:
        return None
    host, port = split_domain_port(rest.split("/", 1)[0])
    if not host:
        return None
    if not port:
        return scheme, host, _DEFAULT_PORTS[scheme]
    return (scheme, host, int(port)) if port.isdigit() else None


def _page_origin(scope: dict) -> tuple[str, str, int] | None:
    """The origin a page on this console was served from: the socket's Host (one of
    ALLOWED_HOSTS) and its scheme (https behind a TLS proxy that says so)."""
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1")
    if not host or not validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
        return None
    secure = scope.get("scheme") == "wss"
    if proxy := getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        name = proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode()
        secure = secure or headers.get(name, b"").decode("latin-1") == proxy[1]
    return _origin(("https://" if secure else "http://") + host)


def origin_allowed(scope: dict) -> bool:
    """Whether a socket comes from one of the console's own pages: its Origin is exactly (scheme,
    host and port) the page's own, CONSOLE_BASE_URL's, or one of CSRF_TRUSTED_ORIGINS."""
    raw = dict(scope.get("headers") or []).get(b"origin")
    origin = _origin(raw.decode("latin-1")) if raw else None
    if origin is None:
        return False
    trusted = [settings.CONSOLE_BASE_URL, *settings.CSRF_TRUSTED_ORIGINS]
    return origin == _page_origin(scope) or origin in {_origin(url) for url in trusted}


class OriginValidator:
    """Refuses a WebSocket whose Origin is not the console's own (see ``origin_allowed``)."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


class Announced:
    """Starts the process's heartbeat as ``kind`` (``agents.services.processes``) when it serves
    its first connection, so that Prometheus finds its machine."""

    def __init__(self, app, kind: str) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.kind = kind
        self.announced = False

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if not self.announced:
            self.announced = heartbeat_start(self.kind)
        return await self.app(scope, receive, send)


application = Announced(
    ProtocolTypeRouter(
        {
            "http": http_app,
            "websocket": OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    ),
    ServingProcess.Kind.WEB,
)

gateway_application = Announced(ProtocolTypeRouter({"http": http_app}), ServingProcess.Kind.GATEWAY)

# What is loaded by now (Django, the apps, their modules) lives as long as the process: kept out
# of the collector's reach, a full collection walks only what requests made, a few ms instead of
# ~50 ms that every call in flight would wait for.
gc.freeze()
# What requests and sockets keep (5,000 open chat sockets, say) would otherwise make the
# collector's full passes run every few seconds, each stopping the process for 0.2-1.5 s to walk
# every socket's objects: collect the young often, the old rarely.
gc.set_threshold(50_000, 20, 100)
# Sync code (the ORM) runs in a thread beside the event loop, and the two take turns at the GIL.
# Each query lets the GIL go and must wait to get it back, for as long as Python's switch
# interval (5 ms) when the loop is busy: a chat turn's dozen queries then took tens of ms while
# the loop streamed other replies, and every turn behind it waited for them. At 0.5 ms, a
# turn's start waits a few ms and the loop's chunks hardly more.
sys.setswitchinterval(0.0005)
