"""The gateway's Prometheus metrics (written by the process that serves the call):

- ``console_gateway_tokens_total{model,type}`` and ``console_gateway_cost_usd_total{model}``;
- ``console_gateway_user_tokens_total{user,type}`` and
  ``console_gateway_user_cost_usd_total{user}``, with a bounded ``user`` label (``UserLabels``);
- ``console_gateway_request_duration_seconds{stream,status}``: from when the gateway starts
  forwarding an admitted call until the call is settled in the ledger (for a stream, after its
  last byte); ``status`` is ``2xx``, ``4xx`` or ``5xx`` (Anthropic's answer, or the gateway's
  502/504 when Anthropic cannot be reached in time) or ``cancelled`` (the caller went away
  before the answer);
- ``console_gateway_overhead_seconds{stream}``: that duration less the time spent waiting on
  Anthropic (the request, its retries, and each read of a stream), i.e. what the gateway adds;
  calls answered by the offline model, which never wait on Anthropic, are not counted here;
- ``console_gateway_upstream_ttft_seconds{model}``: for streams, from sending the request to
  Anthropic to its first content delta.

Authentication and admission happen before the gateway starts forwarding, in the view, and are
not in these durations.

Hypercore's ``agent_token_usage_total{type}`` counts the same tokens, ``type`` one of ``input``,
``output``, ``cache_read`` and ``cache_creation``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal
from types import TracebackType

from django.conf import settings
from prometheus_client import Counter, Histogram

from console.models import User
from console.services import TokenUsage
from gateway.threads import database_threads

__all__ = [
    "GATEWAY_COST",
    "GATEWAY_DURATION",
    "GATEWAY_OVERHEAD",
    "GATEWAY_TOKENS",
    "GATEWAY_TTFT",
    "GATEWAY_USER_COST",
    "GATEWAY_USER_TOKENS",
    "TOKENS",
    "USER_LABELS",
    "GatewayTimer",
    "UserLabels",
    "gateway_count",
]

GATEWAY_TOKENS = Counter(
    "console_gateway_tokens", "Tokens through the gateway, by model and kind.", ["model", "type"]
)
GATEWAY_COST = Counter("console_gateway_cost_usd", "Cost through the gateway, in USD.", ["model"])
GATEWAY_USER_TOKENS = Counter(
    "console_gateway_user_tokens",
    "Tokens through the gateway, by user (the first METRICS_USER_LABELS seen) and kind.",
    ["user", "type"],
)
GATEWAY_USER_COST = Counter(
    "console_gateway_user_cost_usd",
    "Cost through the gateway in USD, by user (the first METRICS_USER_LABELS seen).",
    ["user"],
)
GATEWAY_DURATION = Histogram(
    "console_gateway_request_duration_seconds",
    "Gateway calls, from forwarding to settlement, by streaming and status class.",
    ["stream", "status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320),
)
GATEWAY_OVERHEAD = Histogram(
    "console_gateway_overhead_seconds",
    "What the gateway adds to a call: its duration less the time spent waiting on Anthropic.",
    ["stream"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
GATEWAY_TTFT = Histogram(
    "console_gateway_upstream_ttft_seconds",
    "Streamed calls: from sending the request to Anthropic to its first content delta.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
TOKENS = Counter("agent_token_usage", "Tokens settled by the gateway, by kind.", ["type"])

# Each usage field, with its label in the console's metrics and in Hypercore's agent_token_usage.
_TOKEN_KINDS = (
    ("input_tokens", "input", "input"),
    ("output_tokens", "output", "output"),
    ("cache_creation_input_tokens", "cache_creation_input", "cache_creation"),
    ("cache_read_input_tokens", "cache_read_input", "cache_read"),
)


# --- Per-user labels -----------------------------------------------------------------------------


class UserLabels:
    """The ``user`` label of per-user metrics: the username of each of the first
    ``METRICS_USER_LABELS`` users (default 50; 0: none) a process counts, ``(other)`` for every
    user after them (parentheses cannot occur in a username).

    Why this scheme: each per-user metric stays within N + 1 series per process, whoever calls;
    the hot path needs no query (one username lookup per labelled user, at most N in a
    process's life); and the sums stay exact, since every call is counted under exactly one
    label. Processes label on their own, so a user may be named in one process and ``(other)``
    in another once more than N users have called since they started: series then number at
    most (N + 1) times the processes, and a named user's series may undercount. Below N active
    users (the usual case for one console) every user is named everywhere and exact. Hashing
    users into buckets would agree across processes, but a bucket number tells an operator
    nothing about who spends; exact spend per user, for any number of users, is in the ledger
    (``console.selectors.usage_summary``). A renamed user keeps the old name until restart.
    """

    OTHER = "(other)"

    def __init__(self) -> None:
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()

    async def label(self, user_id: int) -> str:
        name = self._names.get(user_id)
        if name is not None:
            return name
        if len(self._names) >= settings.METRICS_USER_LABELS:
            return self.OTHER
        username = await database_threads.run(_username, user_id=user_id)
        with self._lock:
            if user_id not in self._names and len(self._names) < settings.METRICS_USER_LABELS:
                self._names[user_id] = username
            return self._names.get(user_id, self.OTHER)

    def clear(self) -> None:
        """Forget every label (for tests: a process keeps its labels for life)."""
        with self._lock:
            self._names.clear()


USER_LABELS = UserLabels()


def _username(*, user_id: int) -> str:
    return User.objects.filter(pk=user_id).values_list("username", flat=True).first() or str(
        user_id
    )


async def gateway_count(*, user_id: int, model: str, usage: TokenUsage, cost: Decimal) -> None:
    """Count a settled call's tokens and cost, by model and by user."""
    user = await USER_LABELS.label(user_id)
    for field, label, kind in _TOKEN_KINDS:
        amount = getattr(usage, field)
        GATEWAY_TOKENS.labels(model, label).inc(amount)
        GATEWAY_USER_TOKENS.labels(user, label).inc(amount)
        TOKENS.labels(kind).inc(amount)
    GATEWAY_COST.labels(model).inc(float(cost))
    GATEWAY_USER_COST.labels(user).inc(float(cost))


# --- Gateway latency -----------------------------------------------------------------------------


class GatewayTimer:
    """Times one gateway call (see the module's docstring): its start, the time spent waiting
    on Anthropic, and when a stream's first content arrived; ``observe`` records them."""

    __slots__ = (
        "_observed",
        "_upstream_started",
        "first_token",
        "started",
        "status",
        "stream",
        "upstream",
    )

    def __init__(self, *, stream: bool) -> None:
        self.stream = stream
        self.started = time.perf_counter()
        self.status = "2xx"
        self.upstream: float | None = None  # seconds waited on Anthropic; None: never asked
        self.first_token: float | None = None
        self._upstream_started: float | None = None
        self._observed = False

    def waiting(self) -> _Waiting:
        """``async with timer.waiting():`` around each wait on Anthropic; a failure there sets
        the call's status class."""
        return _Waiting(self)

    def mark_first_token(self) -> None:
        if self.first_token is None and self._upstream_started is not None:
            self.first_token = time.perf_counter() - self._upstream_started

    def observe(self, model: str) -> None:
        """Record the call, once, when it is settled."""
        if self._observed:
            return
        self._observed = True
        total = time.perf_counter() - self.started
        stream = "true" if self.stream else "false"
        GATEWAY_DURATION.labels(stream, self.status).observe(total)
        if self.upstream is not None:
            GATEWAY_OVERHEAD.labels(stream).observe(max(0.0, total - self.upstream))
        if self.first_token is not None:
            GATEWAY_TTFT.labels(model).observe(self.first_token)


class _Waiting:
    __slots__ = ("_began", "_timer")

    def __init__(self, timer: GatewayTimer) -> None:
        self._timer, self._began = timer, 0.0

    async def __aenter__(self) -> None:
        self._began = time.perf_counter()
        if self._timer._upstream_started is None:
            self._timer._upstream_started = self._began

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        timer = self._timer
        timer.upstream = (timer.upstream or 0.0) + time.perf_counter() - self._began
        if error is None:
            return
        if isinstance(error, asyncio.CancelledError):
            timer.status = "cancelled"
        else:  # the gateway's upstream errors carry their status; any other failure is a 5xx
            status = getattr(error, "status", None)
            timer.status = f"{status // 100}xx" if isinstance(status, int) else "5xx"
