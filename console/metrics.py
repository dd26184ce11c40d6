"""The console's Prometheus metrics, shared across processes by PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["GATEWAY_COST", "GATEWAY_TOKENS", "SPAWN_DURATION", "SPAWN_TOTAL"]

SPAWN_TOTAL = Counter("hypercore_agent_spawn", "Agent boots, by outcome.", ["status"])
SPAWN_DURATION = Histogram(
    "hypercore_agent_spawn_duration_seconds",
    "From queueing a boot to a healthy runtime.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
GATEWAY_TOKENS = Counter(
    "console_gateway_tokens", "Tokens through the gateway, by model and kind.", ["model", "type"]
)
GATEWAY_COST = Counter("console_gateway_cost_usd", "Cost through the gateway, in USD.", ["model"])
