"""Middleware: request ids and request metrics on every request; the X-RateLimit-* headers on
every API response."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable

from django.conf import settings
from django.db import OperationalError
from django.http import HttpRequest, HttpResponseBase
from psycopg_pool import PoolTimeout

from plumbing.errors import DatabaseBusy, error_response
from plumbing.metrics import request_count
from wire.logs import HEADER, request_id_or_new, using_request_id

__all__ = [
    "DatabaseBusyMiddleware",
    "RateLimitHeadersMiddleware",
    "RequestIdMiddleware",
    "RequestMetricsMiddleware",
]

# Sync only: the web process runs the whole chain in sync mode (config.asgi.OneHopASGIHandler).
GetResponse = Callable[[HttpRequest], HttpResponseBase]
access_log = logging.getLogger("console.requests")


class RequestIdMiddleware:
    """Every request runs under a request id: the caller's ``X-Request-ID`` when it is a sane
    one, else a new one. Log lines written while it runs carry it, tasks it queues carry it to
    the worker, calls to an agent runtime carry it on to the gateway; the response returns it.
    With ``LOG_FORMAT=json`` each request is also logged, as one line (``console.requests``)."""

    def __init__(self, get_response: GetResponse):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_or_new(request.headers.get(HEADER))
        request.request_id = request_id  # type: ignore[attr-defined]
        started = time.perf_counter()
        with using_request_id(request_id):
            response = self.get_response(request)
            _log(request, response, started)
        response.headers[HEADER] = request_id
        return response


def _log(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
    if settings.LOG_FORMAT != "json":
        return  # the server's own access log says it, for a person to read
    access_log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )


class RequestMetricsMiddleware:
    """Counts and times every request Django routes, as ``agent_requests_total`` and
    ``agent_request_duration_seconds``, under its route's pattern (a stream: until its first
    byte)."""

    def __init__(self, get_response: GetResponse):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        _count(request, response, started)
        return response


def _count(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
    match = getattr(request, "resolver_match", None)
    endpoint = endpoint_label(match.route) if match is not None else "unmatched"
    request_count(
        endpoint=endpoint, status=response.status_code, seconds=time.perf_counter() - started
    )


_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")
_CONVERTER = re.compile(r"<\w+:(\w+)>")


@functools.lru_cache(maxsize=1024)
def endpoint_label(route: str) -> str:
    """A route's pattern as a label: ``/api/v1/agents/<pk>/stop`` for DRF's
    ``api/v1/agents/(?P<pk>[0-9a-fA-F-]{36})/stop$``, ``/agents/<agent_id>/v1/agent/chat`` for
    ``agents/<uuid:agent_id>/v1/agent/chat``. Bounded: there are as many as there are routes."""
    route = _CONVERTER.sub(r"<\1>", _GROUP.sub(r"<\1>", route))
    return "/" + route.replace("^", "").replace("$", "").replace("\\", "")


class RateLimitHeadersMiddleware:
    """Copies the request rate a view counted the request against (``request.rate_status``,
    set by ``QuotaThrottle``, ``request_user`` and the gateway) onto its response."""

    def __init__(self, get_response: GetResponse):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        status = getattr(request, "rate_status", None)
        if status is not None:
            for name, value in status.headers().items():
                response.headers.setdefault(name, value)
        return response


class DatabaseBusyMiddleware:
    """A request that found every pooled database connection in use answers 503
    ``database_busy`` with ``Retry-After``, not a server error."""

    def __init__(self, get_response: GetResponse):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponseBase | None:
        if isinstance(exc, OperationalError) and isinstance(exc.__cause__, PoolTimeout):
            return error_response(DatabaseBusy("the console's database is busy; try again shortly"))
        return None
