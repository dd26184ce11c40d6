"""What a Celery worker does as its sandbox host: it takes that host's queue, registers the host,
heartbeats it while it runs, and takes it offline when it stops. ``AgentsConfig.ready`` connects
these receivers, in every process that loads the app; only a worker sends their signals."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown
from django.conf import settings
from django.db import OperationalError, close_old_connections, connection

from agents import sandbox, services
from agents.tasks import agents_reconcile_host, this_host_queue

log = logging.getLogger(__name__)


@celeryd_after_setup.connect
def _consume_this_hosts_queue(sender: str, instance: object, **_: object) -> None:
    # Each worker serves one sandbox host, and takes that host's work from its own queue.
    instance.app.amqp.queues.select_add(this_host_queue())  # type: ignore[attr-defined]


class HostHeartbeat:
    """A daemon thread that records, every ``interval`` seconds, that this worker's host is alive.

    A worker killed outright stops heartbeating, so beat's ``hosts_mark_stale`` soon takes its
    host offline; a graceful shutdown stops the thread and takes the host offline at once.
    """

    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"host-heartbeat-{name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def beat(self) -> bool:
        """Record one heartbeat; False when the host has no row to record it on."""
        close_old_connections()  # drop a connection the database has closed since the last beat
        try:
            return services.host_heartbeat(name=self.name)
        finally:
            close_old_connections()

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self.interval):
                try:
                    if not self.beat():
                        log.warning("sandbox host %s is not registered: no heartbeat", self.name)
                except Exception:  # the database is away: the next beat tries again
                    log.exception("sandbox host %s: the heartbeat failed", self.name)
        finally:
            connection.close()  # this thread's own connection


_heartbeat: HostHeartbeat | None = None


@worker_ready.connect
def _register_this_host(**_: object) -> None:
    global _heartbeat
    accel = sandbox.host_accel()
    gpus = sandbox.host_gpus()
    for attempt in range(10):
        try:
            services.host_register(
                name=settings.SANDBOX_HOST_NAME,
                backend=settings.SANDBOX_BACKEND,
                capacity_vcpus=settings.SANDBOX_HOST_VCPUS,
                capacity_memory_mib=settings.SANDBOX_HOST_MEMORY_MIB,
                accel=accel,
                relay_url=settings.SANDBOX_RELAY_URL,
                gpus=gpus,
            )
            break
        except OperationalError:  # the database is busy or not up yet: try again shortly
            time.sleep(0.5 * (attempt + 1))
    else:
        raise RuntimeError(f"could not register sandbox host {settings.SANDBOX_HOST_NAME}")
    _heartbeat = HostHeartbeat(settings.SANDBOX_HOST_NAME, settings.SANDBOX_HOST_HEARTBEAT_SECONDS)
    _heartbeat.start()
    # Boots and stops that a killed predecessor left half-done are taken up now, not at the
    # next reconcile: this host's sandboxes are only ever this worker's.
    agents_reconcile_host.apply_async(
        (settings.SANDBOX_HOST_NAME,), {"restarted": True}, queue=this_host_queue()
    )


@worker_shutdown.connect
def _unregister_this_host(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()  # first, so that no late heartbeat brings the host back online
    services.host_set_online(name=settings.SANDBOX_HOST_NAME, online=False)
