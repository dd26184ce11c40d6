"""Console-wide endpoints: health, readiness, metrics and the error pages."""

from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.module_loading import import_string
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from plumbing.authentication import bearer_token
from plumbing.errors import NotAuthenticated, error_response, json_error_page, methods_allowed
from plumbing.metrics import machine_metrics
from plumbing.readiness import readiness

__all__ = ["health", "metrics", "metrics_token_presented", "ready"]

_API_PREFIXES = (
    "/v1/",
    "/api/",
    "/gateway/",
    "/agents/",
    "/health",
    "/livez",
    "/ready",
    "/metrics",
)


@methods_allowed("GET")
def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers (also at ``/healthz`` and ``/livez``)."""
    return JsonResponse({"status": "ok"})


@methods_allowed("GET")
async def ready(request: HttpRequest) -> JsonResponse:
    """Readiness (also at ``/readyz``): the database, the broker and the channel layer
    answer; else 503, with the failing checks named."""
    checks = await readiness()
    failing = [name for name, result in checks.items() if result != "ok"]
    body: dict[str, Any] = {"status": "unavailable" if failing else "ok", "checks": checks}
    if failing:
        body["failing"] = failing
    return JsonResponse(body, status=503 if failing else 200)


@methods_allowed("GET")
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text: every process's metrics of this machine (multiprocess mode) and the
    fleet's gauges, read from the database (the same on every machine: the dashboards and
    alerts take their ``max`` across machines)."""
    expected = settings.METRICS_BEARER_TOKEN
    if expected and not hmac.compare_digest(bearer_token(request), expected):
        return error_response(NotAuthenticated("a metrics bearer token is required"))
    body = machine_metrics() + generate_latest(_fleet_registry())
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def metrics_token_presented(request: HttpRequest) -> bool:
    """Whether the request carries the METRICS_BEARER_TOKEN, which must be set: Prometheus."""
    expected = settings.METRICS_BEARER_TOKEN
    return bool(expected) and hmac.compare_digest(bearer_token(request).encode(), expected.encode())


def _fleet_registry() -> CollectorRegistry:
    # The apps' collectors, which read the database at scrape time (settings.METRICS_COLLECTORS).
    registry = CollectorRegistry(auto_describe=False)
    for path in settings.METRICS_COLLECTORS:
        registry.register(import_string(path)())
    return registry


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(_API_PREFIXES):
        if isinstance(exception, RequestDataTooBig):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            return json_error_page(
                request, 413, "request_too_large", f"the body is larger than {limit} bytes"
            )
        return json_error_page(request, 400, "bad_request", "the request is malformed")
    return render(request, "400.html", status=400)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(_API_PREFIXES):
        return json_error_page(request, 403, "forbidden", "you may not do this")
    return render(request, "403.html", status=403)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(_API_PREFIXES):
        return json_error_page(request, 404, "not_found", "no such route")
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(_API_PREFIXES):
        return json_error_page(request, 500, "internal_error", "the console failed; it is logged")
    return render(request, "500.html", status=500)
