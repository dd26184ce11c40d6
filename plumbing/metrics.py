"""The request and error counters every process increments, shared across processes by
PROMETHEUS_MULTIPROC_DIR (each process writes its own files; ``/metrics`` sums them).

What the database already knows (budgets, the fleet) is read at scrape time by collectors that
live with the apps owning the data and are listed in ``settings.METRICS_COLLECTORS``; the
gateway's own counters live in ``gateway.metrics``, the spawn counters in ``agents.metrics``.

Hypercore's names, for the console as a whole (its dashboards and alerts read these):

- ``agent_requests_total{endpoint,status}`` and ``agent_request_duration_seconds{endpoint}``:
  every request Django routes (the API, the chat routes, the pages), ``endpoint`` being the
  matched route's pattern (``unmatched`` for a 404 no route matched), ``status`` the HTTP status;
- ``agent_errors_total{error_type}``: every answer in the error shape, by its code (codes the
  console does not know, which a runtime could make up, count as ``other``).
"""

from __future__ import annotations

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "ERRORS",
    "ERROR_CODES",
    "REQUESTS",
    "REQUEST_DURATION",
    "error_count",
    "machine_metrics",
    "request_count",
]

REQUESTS = Counter(
    "agent_requests", "Requests the console served, by route and status.", ["endpoint", "status"]
)
REQUEST_DURATION = Histogram(
    "agent_request_duration_seconds",
    "Time to answer a request (a stream: to its first byte), by route.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ERRORS = Counter("agent_errors", "Answers in the error shape, by error code.", ["error_type"])


def request_count(*, endpoint: str, status: int, seconds: float) -> None:
    """Count one request Django answered; ``endpoint`` must be a route pattern, never a path."""
    REQUESTS.labels(endpoint, str(status)).inc()
    REQUEST_DURATION.labels(endpoint).observe(seconds)


# Every code an answer in the error shape may carry, so a bounded label set. ``plumbing.errors``
# adds the codes of ConsoleError and each of its subclasses (as it is defined) and of DRF's
# mapped exceptions; these are made elsewhere: by the error pages, by Anthropic's API (its error
# types, which the gateway passes on) and by the agent runtime.
ERROR_CODES: set[str] = {
    "internal_error",
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
    "billing_error",
    "gateway_unreachable",
    "gateway_error",
    "upstream_error",
    "agent_at_capacity",
    "agent_error",
}


def error_count(code: str) -> None:
    """Count one answer in the error shape under its code, or ``other`` for a code the console
    does not know (a runtime's answer passes its code on, and a runtime is not trusted)."""
    ERRORS.labels(code if code in ERROR_CODES else "other").inc()


def machine_metrics() -> bytes:
    """Prometheus text of every process of this machine that writes to PROMETHEUS_MULTIPROC_DIR
    (summed as multiprocess mode does), or of this process alone when it is not set."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
