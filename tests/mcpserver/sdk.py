"""The SDK's own client against the console's MCP server over Streamable HTTP, and the JSON of
a tool's answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

__all__ = ["answer", "http_session"]

T = TypeVar("T")


def http_session(
    base_url: str,
    token: str | None,
    work: Callable[[Client], Awaitable[T]],
    *,
    mode: str = "auto",
) -> T:
    """``work(client)``'s answer, with an SDK client connected to ``base_url``/mcp with
    ``token`` (None: no credential), on an event loop of its own."""

    async def run() -> T:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            transport = streamable_http_client(f"{base_url}/mcp", http_client=http)
            async with Client(transport, mode=mode, cache=None) as client:  # type: ignore[arg-type]
                return await work(client)

    return asyncio.run(run())


def answer(result: Any) -> dict[str, Any]:
    """A tool's JSON answer (or error body), from its text content, which must agree with
    its structured content."""
    text = json.loads(result.content[0].text)
    assert text == result.structured_content
    return text
