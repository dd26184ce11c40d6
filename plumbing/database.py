"""Database work from async code, one step at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import SyncToAsync
from django.db import connections

__all__ = ["database_sync_to_async"]


class _DatabaseStep(SyncToAsync):  # type: ignore[type-arg]
    """``sync_to_async`` that lets go of its connections before and after the step, where
    ``CONN_MAX_AGE`` says so: a pooled PostgreSQL connection goes back to the pool at once,
    rather than staying with the thread while a chat turn streams for minutes. A connection
    inside a transaction (a caller's ``atomic`` block) is left as it is."""

    def thread_handler(self, loop: Any, *args: Any, **kwargs: Any) -> Any:
        _let_go()  # and a connection left broken by an earlier step is not reused
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            _let_go()


def _let_go() -> None:
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def database_sync_to_async(func: Callable[..., Any]) -> Callable[..., Any]:
    return _DatabaseStep(func, thread_sensitive=True)
