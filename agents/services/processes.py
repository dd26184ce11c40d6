"""The register of serving processes: each web, gateway and relay process says it is alive every
PROCESS_HEARTBEAT_SECONDS, with its machine and where that machine's ``/metrics`` is read, so
that Prometheus finds every machine of the console (``agents.selectors.metrics_machines``)
without a list kept by hand."""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections
from django.utils import timezone

from agents.models import ServingProcess

__all__ = ["heartbeat_start", "heartbeat_stop", "metrics_url_of", "process_seen"]

log = logging.getLogger(__name__)

# A process silent this long is forgotten: its row is removed by the next heartbeat of any.
_FORGET_AFTER = timedelta(days=1)


def metrics_url_of(kind: str) -> str:
    """Where Prometheus reads the ``/metrics`` of the machine of a ``kind`` process: METRICS_URL,
    else the relay's address on a sandbox host and the console's on a web or gateway one."""
    if settings.METRICS_URL:
        return settings.METRICS_URL
    if kind == ServingProcess.Kind.RELAY and settings.SANDBOX_RELAY_URL:
        return f"{settings.SANDBOX_RELAY_URL}/metrics"
    return f"{settings.CONSOLE_BASE_URL}/metrics"


def process_seen(
    *, kind: str, machine: str, pid: int, metrics_url: str, started_at: datetime, now: datetime
) -> None:
    """Record that process ``pid`` of ``kind`` on ``machine`` is alive at ``now``; forget the
    processes silent for a day."""
    ServingProcess.objects.update_or_create(
        machine=machine,
        kind=kind,
        pid=pid,
        defaults={"metrics_url": metrics_url, "started_at": started_at, "seen_at": now},
    )
    ServingProcess.objects.filter(seen_at__lt=now - _FORGET_AFTER).delete()


def _beat(kind: str, started_at: datetime) -> None:
    close_old_connections()
    try:
        process_seen(
            kind=kind,
            machine=settings.SANDBOX_HOST_NAME,
            pid=os.getpid(),
            metrics_url=metrics_url_of(kind),
            started_at=started_at,
            now=timezone.now(),
        )
    except DatabaseError as exc:  # the database is away: the next beat tries again
        log.warning("process register: %s %d not recorded: %s", kind, os.getpid(), exc)
    finally:
        connections.close_all()  # this thread's own: it sleeps for seconds


class _Heartbeat:
    """The one heartbeat thread of this process, if started."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def run(self, kind: str, every: float) -> None:
        started_at = timezone.now()
        while True:
            _beat(kind, started_at)
            if self.stopping.wait(every):
                return


_heartbeat = _Heartbeat()


def heartbeat_start(kind: str) -> bool:
    """Start this process's heartbeat as ``kind`` (once a process; later calls do nothing), in a
    daemon thread; False when PROCESS_HEARTBEAT_SECONDS is 0."""
    every = settings.PROCESS_HEARTBEAT_SECONDS
    if not every:
        return False
    with _heartbeat.lock:
        if _heartbeat.thread is None:
            _heartbeat.stopping.clear()
            _heartbeat.thread = threading.Thread(
                target=_heartbeat.run, args=(kind, every), name=f"{kind}-heartbeat", daemon=True
            )
            _heartbeat.thread.start()
    return True


def heartbeat_stop(timeout: float = 10.0) -> None:
    """Stop this process's heartbeat, if it runs (its row stays until it goes stale)."""
    with _heartbeat.lock:
        thread, _heartbeat.thread = _heartbeat.thread, None
        _heartbeat.stopping.set()
    if thread is not None:
        thread.join(timeout)
