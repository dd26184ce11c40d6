"""The LLM gateway: Anthropic's Messages API in front of Anthropic, for agents and integrations.

``calls`` authenticates and admits a call and settles it; ``upstream`` forwards it to Anthropic;
``app`` serves ``POST /gateway/v1/messages`` as an ASGI app beside Django's.
"""
