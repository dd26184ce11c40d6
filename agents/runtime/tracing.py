"""The runtime's request ids and log lines: each request runs under the console's
``X-Request-ID`` (or a new id), which its log lines carry and its calls to the gateway send on;
the runtime logs JSON, one object per line."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from wire.logs import (
    HEADER,
    JsonFormatter,
    RequestIdFilter,
    current_request_id,
    request_id_or_new,
    using_request_id,
)

__all__ = ["configure_logging", "request_id_header", "request_ids"]

log = logging.getLogger("agents.runtime.requests")
# Polled by the console and by scrapers: not worth a line each.
_QUIET = frozenset({"/health", "/ready", "/metrics"})


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr (the sandbox's log), each with the request id of its request."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def request_id_header() -> dict[str, str]:
    """The header that carries the current request id on to the gateway."""
    request_id = current_request_id()
    return {HEADER: request_id} if request_id else {}


@web.middleware
async def request_ids(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Run the request under its id, answer with it, and log the request (but the polls)."""
    request_id = request_id_or_new(request.headers.get(HEADER))
    started = time.perf_counter()
    status = 500
    with using_request_id(request_id):
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:  # a stream has sent its headers already
                response.headers[HEADER] = request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[HEADER] = request_id
            raise
        finally:
            if request.path not in _QUIET:
                log.info(
                    "%s %s %s",
                    request.method,
                    request.path,
                    status,
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )
