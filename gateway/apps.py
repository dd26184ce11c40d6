from __future__ import annotations

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    """The LLM gateway: Anthropic's Messages API for agents and API keys, metered and budgeted."""

    name = "gateway"
