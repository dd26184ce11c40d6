"""Waiting in tests for something another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["eventually"]

T = TypeVar("T")


def eventually(
    condition: Callable[[], T],
    timeout: float = 5.0,
    *,
    every: float = 0.02,
    failing: str | Callable[[], str] | None = None,
) -> T:
    """``condition()``'s first truthy value within ``timeout`` seconds (polled every ``every``
    seconds), else its last value; with ``failing``, a time-out fails the test with that
    message instead (a callable is called then, to read a log as it stands)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(every)
    if result := condition():
        return result
    if failing is None:
        return result
    raise AssertionError(failing() if callable(failing) else failing)
