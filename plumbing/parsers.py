"""Callers' JSON, parsed one way everywhere: the DRF parser below, the plain views and the chat
socket's frames all call ``json_loads``."""

from __future__ import annotations

import math
import re
from typing import IO, Any

from django.conf import settings
from rest_framework.parsers import BaseParser

from plumbing.errors import BadRequest, MalformedBody, PayloadTooLarge
from wire.jsonbound import TooDeep, loads

__all__ = ["JSONParser", "json_loads"]

# Text with a lone surrogate can be neither stored nor written back (an error quoting it fails
# to render). Only a \u escape can make one: raw UTF-8 cannot encode it.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_loads(
    raw: str | bytes, *, refusal: type[BadRequest] = MalformedBody, what: str = "body"
) -> Any:
    """``raw`` parsed, or ``refusal`` saying why not: invalid JSON or text, nesting past
    ``jsonbound.MAX_DEPTH``, a number no field can hold (NaN, Infinity, 1e400), a lone
    surrogate."""
    try:
        value = loads(raw)
    except TooDeep as exc:
        raise refusal(
            f"the {what}'s JSON nests deeper than {exc.limit} levels",
            details={"max_depth": exc.limit},
        ) from None
    except ValueError:  # UnicodeDecodeError included
        raise refusal(f"the {what} is not valid JSON (UTF-8)") from None
    raw_bytes = raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw
    problem = _unusable(value, text=_SURROGATE_ESCAPE.search(raw_bytes) is not None)
    if problem:
        raise refusal(f"the {what} holds {problem}")
    return value


def _unusable(value: Any, *, text: bool) -> str | None:
    """What in ``value`` no field can hold: a float the parser made NaN or infinite, or (when
    ``text``) a string or key with a lone surrogate. Iterative: ``value`` is bounded in depth,
    not in breadth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "a number out of range (NaN, Infinity or beyond a double)"
        if text and isinstance(item, str) and _SURROGATE.search(item):
            return "a lone UTF-16 surrogate (\\ud800-\\udfff)"
        if isinstance(item, dict):
            stack.extend(item.values())
            if text:
                stack.extend(item)
        elif isinstance(item, list):
            stack.extend(item)
    return None


class JSONParser(BaseParser):
    """DRF's parser for ``application/json``, through ``json_loads``; a body larger than
    ``MAX_REQUEST_BYTES`` is refused before it is read whole (DRF reads the request stream,
    which Django's own limit does not guard)."""

    media_type = "application/json"

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise PayloadTooLarge(
                f"the body is larger than {limit} bytes", details={"limit": limit}
            )
        return json_loads(raw)
