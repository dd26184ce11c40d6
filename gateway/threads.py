"""The threads that run the gateway's database work, each keeping its connection open: a
call's admission and settlement skip the connection set-up that Django's request cycle pays."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, connections

__all__ = ["DatabaseThreads", "database_threads"]

T = TypeVar("T")


class DatabaseThreads:
    """The threads that run the gateway's database work, each keeping its connection."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    settings.GATEWAY_DB_THREADS, thread_name_prefix="gateway-db"
                )
            return self._executor

    async def run(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), functools.partial(_in_thread, fn, kwargs))

    def close(self) -> None:
        """Close every thread's connections, then the threads (at shutdown, and in tests)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        # One job per thread, each held at the barrier until every thread has one.
        barrier = threading.Barrier(settings.GATEWAY_DB_THREADS)
        jobs = [executor.submit(_close_here, barrier) for _ in range(barrier.parties)]
        for job in jobs:
            job.result()
        executor.shutdown()


def _in_thread(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    try:
        return fn(**kwargs)
    except (InterfaceError, OperationalError):
        if connection.connection is None or connection.is_usable():
            raise  # a refusal by a working database (locked, out of connections)
        connection.close()  # the server closed it meanwhile: once more, connected afresh
        return fn(**kwargs)


def _close_here(barrier: threading.Barrier) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=10)
    connections.close_all()


database_threads = DatabaseThreads()
