"""An ASGI app that answers ``GET /<status>`` with that status, for the status-line tests.

It loads ``config.asgi`` first, as daphne does when it serves the web process."""

from __future__ import annotations

import config.asgi  # noqa: F401 - loaded as the web process loads it

__all__ = ["application"]


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    status = int(scope["path"].strip("/") or 200)
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})
