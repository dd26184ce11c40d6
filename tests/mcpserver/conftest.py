"""The MCP server's tests talk to it with the SDK's own client (``tests.mcpserver.sdk``), over
Streamable HTTP against the console served on loopback, and over stdio against
``manage.py mcp_stdio``."""

from __future__ import annotations

import pytest


@pytest.fixture
def key_of():
    """``key_of(user, *scopes)``: a new raw API key of ``user`` (default scopes without any)."""
    from console.services import api_key_create

    def make(owner, *scopes: str) -> str:
        return api_key_create(user=owner, scopes=scopes or None)[1]

    return make
