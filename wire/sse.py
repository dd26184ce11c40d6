"""Server-sent events: writing frames and reading them back. Shared by the runtime, the gateway
and the console's chat proxy; no Django here."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from wire.jsonbound import loads

__all__ = ["sse_events", "sse_events_of_chunks", "sse_frame"]


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def sse_events(lines: AsyncIterable[str | bytes]) -> AsyncIterator[tuple[str, Any]]:
    """(event, parsed data) for each frame of a stream of lines (with or without line ends).
    Data that is not JSON, or nests past ``jsonbound.MAX_DEPTH``, raises ``ValueError``."""
    event, data = "", []
    async for raw in lines:
        line = (raw.decode() if isinstance(raw, bytes) else raw).rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield event, loads("\n".join(data))
            event, data = "", []
    if data:
        yield event, loads("\n".join(data))


async def sse_events_of_chunks(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[str, Any]]:
    """As ``sse_events``, from a byte stream read in pieces of any size (aiohttp's
    ``iter_any()``): the lines each piece completes are parsed together, not read one at a time
    through the stream reader, which cost a chat chunk three reads."""
    event, data, tail = b"", [], b""
    async for chunk in chunks:
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()  # the line the next piece continues
        for raw in lines:
            line = raw.rstrip(b"\r")
            if line.startswith(b"event:"):
                event = line[6:].strip()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
            elif not line and data:
                yield event.decode(), loads(b"\n".join(data))
                event, data = b"", []
    line = tail.rstrip(b"\r")
    if line.startswith(b"data:"):
        data.append(line[5:].strip())
    if data:
        yield event.decode(), loads(b"\n".join(data))
