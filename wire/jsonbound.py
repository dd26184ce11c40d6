"""JSON from callers, parsed with a bound on its nesting. Shared by the console's routes, its
gateway and its WebSocket; no Django here.

Python's parser recurses once per level: a body nested a thousand deep raises ``RecursionError``
mid-parse, and one that parses deep still costs every later walk over it. Nothing the console
accepts needs more than a few dozen levels (a tool's input schema is the deepest), so anything
past ``MAX_DEPTH`` is refused as bad input.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "TooDeep", "depth_of", "loads"]

MAX_DEPTH = 64


class TooDeep(ValueError):
    """The document nests deeper than allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the JSON nests deeper than {limit} levels")
        self.limit = limit


def depth_of(value: Any, *, limit: int = MAX_DEPTH) -> int:
    """How deep ``value``'s containers nest (a scalar is 0, ``[]`` is 1); walks without recursion
    and stops as soon as ``limit`` is passed (returning ``limit + 1``)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def loads(raw: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads``, refusing with ``TooDeep`` (a ``ValueError``) a document that nests past
    ``max_depth``; invalid JSON or text raises ``ValueError`` as ``json.loads`` does."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise TooDeep(max_depth) from None
    # Each level opens a bracket: a document with few of them (a chat chunk) needs no walk.
    if _brackets(raw) > max_depth and depth_of(value, limit=max_depth) > max_depth:
        raise TooDeep(max_depth)
    return value


def _brackets(raw: str | bytes | bytearray) -> int:
    if isinstance(raw, str):
        return raw.count("{") + raw.count("[")
    return raw.count(b"{") + raw.count(b"[")
