"""Beat's scheduler: however many beats run (one per machine, for failover), one sends.

celery-redbeat keeps the schedule that ``config/celery.py`` declares, with each entry's last
run, in Redis, and sends only while it holds its lock there (``redbeat::lock``), renewed every
loop. A beat started beside it waits for the lock, and takes over where the first left off
when that one stops (at once) or dies (once the lock expires, ``BEAT_LOCK_SECONDS``). A beat
that finds its lock taken exits (``LockNotOwnedError``), to be started again as the one waiting.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from django.core.exceptions import ImproperlyConfigured
from redbeat import RedBeatScheduler
from redis.exceptions import LockError

__all__ = ["OneBeatScheduler"]


class OneBeatScheduler(RedBeatScheduler):
    """RedBeat, writing the declared schedule into Redis only once it holds the lock.

    RedBeat writes it as beat starts, before taking the lock: a waiting beat that so rewrote an
    entry just as the running one sent it would put its next run back to its last one, and the
    task would run twice in a period.
    """

    def __init__(self, app: Celery, **kwargs: Any) -> None:
        if not app.conf.redbeat_redis_url:
            raise ImproperlyConfigured(
                "beat keeps its schedule in Redis: set REDIS_URL, or a Redis CELERY_BROKER_URL"
            )
        self._declared = False
        super().__init__(app, **kwargs)

    def setup_schedule(self) -> None:
        """Nothing yet: the first tick, under the lock, does it."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._declared:
            if self.lock is None:  # taking it failed as beat started, and was logged then
                raise LockError("beat holds no lock on the schedule")
            super().setup_schedule()
            self._declared = True
        return super().tick(*args, **kwargs)
