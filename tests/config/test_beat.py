"""Two beats, one schedule: ``celery -A config beat`` run twice (one per machine, for failover)
against one Redis sends each periodic task once a period; when the beat that holds the lock is
killed, the other takes over within the lock's time, and at once when it stops cleanly. A beat
that waits leaves the schedule alone, and one frozen past its lock exits without sending.

What the beats send is counted on the broker itself, each message with the beat that sent it
(its ``origin``): what a worker would run, once per message.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]

LOCK_SECONDS = 3
LOOP_SECONDS = LOCK_SECONDS / 5  # settings: how often the holder renews, a waiting beat asks
# Periods of the console's own schedule (config/celery.py), made short for the test.
PERIODS = {
    "agents.tasks.hosts_mark_stale": 1.0,  # SANDBOX_HOST_HEARTBEAT_SECONDS
    "agents.tasks.agents_reconcile": 2.0,  # RECONCILE_INTERVAL_SECONDS
    "agents.tasks.warm_pools_refill": 2.0,
    "agents.tasks.agents_reap_idle": 2.0,
    "scaling.tasks.evaluate_due": 5.0,
}
# A beat's line for each task it sends (celery's own log format).
_SENDING = re.compile(
    r"^\[(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d),(\d{3}): INFO/MainProcess\] "
    r"Scheduler: Sending due task \S+ \((\S+)\)$",
    re.MULTILINE,
)
BROKER_KEYS = ("celery", "_kombu.binding.celery", "_kombu.binding_permanent.celery")


class Sent(threading.Thread):
    """The tasks the beats send, each recorded as it reaches the broker (polled every 10 ms)."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.seen: list[tuple[float, str, int]] = []  # (when, task, the sending beat's pid)
        self._done = threading.Event()
        self._polling = threading.Lock()

    def run(self) -> None:
        while not self._done.wait(0.01):
            self.poll()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def poll(self) -> int:
        """Record what arrived since the last poll; how many have arrived."""
        with self._polling:
            queued = self.client.lrange("celery", 0, -1)  # LPUSHed: newest first
            now = time.monotonic()
            for raw in reversed(queued[: len(queued) - len(self.seen)]):
                headers = json.loads(raw)["headers"]
                pid = int(headers["origin"].removeprefix("gen").split("@")[0])
                self.seen.append((now, headers["task"], pid))
            return len(self.seen)

    def settled(self) -> int:
        """How many have arrived, once what a beat stopped just now had written has reached
        Redis (a write in flight takes far less than 0.1 s)."""
        time.sleep(0.1)
        return self.poll()

    def senders(self, since: int = 0) -> set[int]:
        """The beats that sent the tasks from the ``since``-th on."""
        return {pid for _, _, pid in self.seen[since:]}

    def first_from(self, pid: int, timeout: float) -> float:
        assert eventually(lambda: pid in self.senders(), timeout=timeout), f"nothing from {pid}"
        return next(when for when, _, sender in self.seen if sender == pid)

    def count(self, task: str, since: float) -> int:
        return sum(1 for when, name, _ in self.seen if name == task and when >= since)


class Beats:
    """``celery -A config beat`` processes, each logging to its own file."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in {
                "CELERY_BROKER_URL",
                "CELERY_TASK_ALWAYS_EAGER",
                "DATABASE_URL",
                "PYTEST_CURRENT_TEST",
            }
        } | {
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": redis_url,
            "CONSOLE_VAR_DIR": str(tmp_path / "var"),
            "BEAT_LOCK_SECONDS": str(LOCK_SECONDS),
            "SANDBOX_HOST_HEARTBEAT_SECONDS": "1",
            "RECONCILE_INTERVAL_SECONDS": "2",
            "LOG_FORMAT": "plain",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(self) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"beat-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"],
                cwd=self.tmp_path,  # what a beat writes where it runs stays in the test's
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def sends(self) -> list[tuple[float, str]]:
        """Each task a beat logged it sent: (when, in seconds, to the millisecond; the task)."""
        found = []
        for proc in self.procs:
            for day, clock, millis, task in _SENDING.findall(self.log(proc)):
                when = datetime.datetime.fromisoformat(f"{day}T{clock}").timestamp()
                found.append((when + int(millis) / 1000, task))
        return sorted(found)

    def started(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether it runs the scheduler (and handles SIGTERM)."""
        return "beat: Starting..." in self.log(proc)

    def output(self) -> str:
        return "\n".join(f"--- beat {p.pid}:\n{self.log(p)[-3000:]}" for p in self.procs)

    def kill_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def assert_once_a_period(beats: Beats, sent: Sent) -> None:
    """No task was sent twice in one of its periods, by one beat or by two. The moments are
    those the beats logged as they sent (polling the broker would add its own jitter), and each
    message on the broker is one of those sends."""
    logged = beats.sends()
    for task, period in PERIODS.items():
        times = [when for when, name in logged if name == task]
        assert sum(1 for _, name, _ in sent.seen if name == task) <= len(times), task
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # Beat sends a task once it is due, never before: 0.05 s is the clocks' reading.
        assert all(gap > period - 0.05 for gap in gaps), (task, [round(g, 2) for g in gaps])


@pytest.fixture
def client():
    client = redis.Redis.from_url(os.environ["REDIS_URL"])

    def clean() -> None:
        client.delete(*BROKER_KEYS)
        for key in client.scan_iter("redbeat:*"):
            client.delete(key)

    clean()
    yield client
    clean()
    client.close()


@pytest.fixture
def beats(tmp_path, client) -> Iterator[Beats]:
    beats = Beats(tmp_path, os.environ["REDIS_URL"])
    yield beats
    beats.kill_all()


@pytest.fixture
def sent(client) -> Iterator[Sent]:
    sent = Sent(client)
    sent.start()
    yield sent
    sent.stop()


@pytest.mark.redis
def test_two_beats_send_each_task_once_a_period_and_the_second_takes_over(beats, sent):
    first, second = beats.start(), beats.start()  # together: neither waits for the other
    assert eventually(lambda: sent.seen, timeout=20), beats.output()
    began = sent.seen[0][0]
    time.sleep(6.5)  # periods go by
    assert len(sent.senders()) == 1, beats.output()
    (holder,) = sent.senders()
    waiting = second if holder == first.pid else first
    assert waiting.poll() is None, beats.output()  # it waits for the lock
    # Once a period, and not fewer: every second, over 6.5 s.
    assert sent.count("agents.tasks.hosts_mark_stale", since=began) >= 6

    # The machine of the beat holding the lock dies: the other sends within the lock's time
    # (and a loop of its asking for the lock), first what fell due meanwhile.
    os.killpg(holder, signal.SIGKILL)
    killed = time.monotonic()
    took_over = sent.first_from(waiting.pid, timeout=LOCK_SECONDS + LOOP_SECONDS + 5)
    assert took_over - killed <= LOCK_SECONDS + LOOP_SECONDS + 1.0, beats.output()

    # The killed one's replacement (the launcher starts it again) waits and sends nothing, nor
    # does a third beat.
    replacement, third = beats.start(), beats.start()
    for beat in (replacement, third):
        assert eventually(lambda b=beat: beats.started(b), timeout=20), beats.output()
    since = sent.poll()
    time.sleep(4.0)
    assert sent.senders(since) == {waiting.pid}, beats.output()
    assert replacement.poll() is None and third.poll() is None, beats.output()

    # A waiting beat stops at once when asked to.
    third.terminate()
    assert third.wait(timeout=5) == 0, beats.output()

    # A clean stop gives the lock up: the replacement takes over within a loop.
    waiting.terminate()
    stopped = time.monotonic()
    assert waiting.wait(timeout=10) == 0, beats.output()
    since = sent.settled()  # what it sent before it stopped
    handed_over = sent.first_from(replacement.pid, timeout=LOCK_SECONDS + 5)
    assert handed_over - stopped <= LOOP_SECONDS + 1.0, beats.output()
    time.sleep(3.0)
    assert sent.senders(since) == {replacement.pid}, beats.output()

    replacement.terminate()
    assert replacement.wait(timeout=10) == 0, beats.output()
    sent.poll()
    assert_once_a_period(beats, sent)


@pytest.mark.redis
def test_a_beat_that_lost_the_lock_while_frozen_exits_without_sending(beats, sent, client):
    # Another beat holds the lock: one that starts waits, and leaves the schedule alone.
    client.set("redbeat::lock", "another beat's", px=60_000)
    first = beats.start()
    assert eventually(lambda: beats.started(first), timeout=20), beats.output()
    time.sleep(2 * LOOP_SECONDS)  # it asks for the lock, twice
    assert sorted(client.scan_iter("redbeat:*")) == [b"redbeat::lock"], beats.output()
    client.delete("redbeat::lock")
    sent.first_from(first.pid, timeout=LOOP_SECONDS + 5)

    # Its machine freezes (or is cut off) for longer than the lock lasts: the second beat
    # takes over, and the first, thawed, finds its lock taken and exits before sending again.
    second = beats.start()
    assert eventually(lambda: beats.started(second), timeout=20), beats.output()
    os.kill(first.pid, signal.SIGSTOP)
    frozen = sent.settled()
    sent.first_from(second.pid, timeout=LOCK_SECONDS + LOOP_SECONDS + 5)
    os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=5) != 0, beats.output()
    assert "LockNotOwnedError" in beats.log(first), beats.output()
    time.sleep(2.0)
    assert sent.senders(frozen) == {second.pid}, beats.output()
    assert_once_a_period(beats, sent)
