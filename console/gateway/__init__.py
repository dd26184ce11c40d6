"""The LLM gateway: Anthropic's Messages API in front of Anthropic, for agents and integrations.

``calls`` authenticates and admits a call and settles it; ``upstream`` forwards it to Anthropic;
``app`` serves ``POST /gateway/v1/messages`` as an ASGI app beside Django's.
"""

from console.gateway.app import GatewayApp, database_threads
from console.gateway.calls import (
    OFFLINE_MODEL,
    GatewayCall,
    GatewayCaller,
    UpstreamError,
    gateway_authenticate,
    gateway_begin,
    gateway_finish,
    validate_body,
)
from console.gateway.upstream import upstream_close

__all__ = [
    "OFFLINE_MODEL",
    "GatewayApp",
    "GatewayCall",
    "GatewayCaller",
    "UpstreamError",
    "database_threads",
    "gateway_authenticate",
    "gateway_begin",
    "gateway_finish",
    "upstream_close",
    "validate_body",
]
