"""What the benchmarks share: percentiles, the TARGET line, a scratch PostgreSQL database, child
processes (the console, the fake Anthropic) that are always stopped, and the closed-loop load
that drives them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import urlparse, urlunparse

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
# The benches import the console, from the checkout they are in.
sys.path.insert(0, str(ROOT))

__all__ = [
    "CLIENT_ERRORS",
    "ROOT",
    "Child",
    "Failed",
    "Run",
    "add_console_arguments",
    "close_database",
    "closed_loop",
    "console_environment",
    "cpu_seconds",
    "database_url",
    "free_port",
    "migrate",
    "open_loop",
    "percentile",
    "redis_url",
    "report",
    "scratch_database",
    "scratch_redis",
    "start_broker",
    "start_console",
    "start_fake_anthropic",
    "user_limits",
    "wait_ready",
]

T = TypeVar("T")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``th percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def report(name: str, value: float, unit: str, op: str, target: float, *, digits: int = 1) -> str:
    """``TARGET <name> <value> <unit> <op> <target> PASS|FAIL``, ``value`` to ``digits``
    decimals."""
    ok = value <= target if op == "<=" else value >= target
    return f"TARGET {name} {value:.{digits}f} {unit} {op} {target:g} {'PASS' if ok else 'FAIL'}"


def interrupt_on_signals() -> None:
    """Make Ctrl-C and SIGTERM raise ``KeyboardInterrupt``, even in a bench started in the
    background (where SIGINT comes ignored), so that its ``finally`` blocks stop what it
    started and drop its database."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def print_summary(began: float, lines: list[str]) -> None:
    """The run's length and the load average at its end, then ``lines`` (its TARGET lines)."""
    print(f"total: {time.perf_counter() - began:.1f} s; load average {os.getloadavg()[0]:.1f}")
    for line in lines:
        print(line)


def console_environment(
    var_dir: Path,
    database_url: str | None,
    *,
    redis_url: str | None = None,
    lean: bool = False,
    unset: tuple[str, ...] = (),
    **variables: str,
) -> None:
    """The console's environment, in this process and so in those it starts: its settings, its
    files in ``var_dir``, a fresh secret key, the PostgreSQL database ``database_url`` names
    (SQLite in ``var_dir`` without one), the Redis database ``redis_url`` names (``make run``'s
    private broker and in-memory layers without one), then ``variables``; the variables
    ``unset`` names are removed.

    By default it is what ``make run`` gives its processes (``config.launch.local_environment``:
    multiprocess metrics in ``var_dir``, its cookie and logging settings); ``lean`` removes the
    multiprocess metrics, the stripped console the benches once measured."""
    # The console's modules are imported where used: this module puts the checkout on sys.path.
    from config.launch import local_environment

    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR"):
        os.environ.pop(name, None)
    os.environ["SECRET_KEY"] = secrets.token_urlsafe(40)
    os.environ.update(local_environment(var_dir))
    for name in unset:
        os.environ.pop(name, None)
    if lean:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    os.environ.update(variables)
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    if redis_url:
        os.environ["REDIS_URL"] = redis_url


def add_console_arguments(parser: argparse.ArgumentParser, *, redis: bool = True) -> None:
    """``--lean``, ``--database-url`` and (with ``redis``) ``--redis-url``."""
    parser.add_argument(
        "--lean",
        action="store_true",
        help="the stripped console: no multiprocess metrics, no limits or budget on the user",
    )
    parser.add_argument(
        "--database-url", type=database_url, help="a PostgreSQL database to create, use and drop"
    )
    if redis:
        parser.add_argument(
            "--redis-url", type=redis_url, help="a Redis database to use and flush (before, after)"
        )


def user_limits(user_id: int, *, lean: bool, **quota: int | None) -> None:
    """A bench user's limits. Shipped: the default quota, whose rate, token and concurrency
    checks all run, with limits no bench reaches, and one daily USD budget that every call
    reserves and settles against. Lean: no rate, token or concurrency limit and no budget
    (admission skips those checks). ``quota`` sets more of the quota's fields. Django must be
    set up."""
    from decimal import Decimal

    from console.models import Budget, Quota

    unlimited = None if lean else 1_000_000_000
    Quota.objects.get_or_create(user_id=user_id)
    Quota.objects.filter(user_id=user_id).update(
        requests_per_minute=unlimited,
        tokens_per_minute=unlimited,
        concurrent_requests=unlimited,
        **quota,
    )
    Budget.objects.filter(user_id=user_id).delete()
    if not lean:
        Budget.objects.create(
            user_id=user_id,
            metric=Budget.Metric.USD,
            window=Budget.Window.DAY,
            limit=Decimal(1_000_000),
        )


def migrate() -> None:
    """Django, set up in this process, on a freshly migrated database."""
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def database_url(value: str) -> str:
    """``--database-url``'s type: a PostgreSQL URL that names a database."""
    parsed = urlparse(value)
    if parsed.scheme not in ("postgres", "postgresql"):
        raise argparse.ArgumentTypeError("must be a postgres:// URL")
    if not parsed.path.lstrip("/"):
        raise argparse.ArgumentTypeError("must name a database, e.g. …/agent_console_bench")
    return value


def redis_url(value: str) -> str:
    """``--redis-url``'s type: a Redis URL."""
    if urlparse(value).scheme not in ("redis", "rediss", "unix"):
        raise argparse.ArgumentTypeError("must be a redis:// URL")
    return value


@contextlib.contextmanager
def scratch_redis(url: str | None) -> Iterator[None]:
    """The Redis database ``url`` names, flushed before the block and after it, however it ends;
    nothing without ``url``."""
    if not url:
        yield
        return
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()
        try:
            yield
        finally:
            client.flushdb()


@contextlib.contextmanager
def scratch_database(url: str | None) -> Iterator[None]:
    """The PostgreSQL database ``url`` names, created for the block (dropped first if it exists)
    and dropped when the block ends, however it ends; nothing without ``url`` (SQLite then)."""
    if not url:
        yield
        return
    _recreate_database(url)
    try:
        yield
    finally:
        _recreate_database(url, drop_only=True)


def _recreate_database(url: str, *, drop_only: bool = False) -> None:
    """Drop the PostgreSQL database ``url`` names (and create it afresh unless ``drop_only``)."""
    import psycopg
    from psycopg import sql

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    maintenance = urlunparse(parsed._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if not drop_only:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def close_database() -> None:
    """Close this process's database connection (and pool), so the database can be dropped."""
    from django.db import connection

    connection.close()
    if connection.vendor == "postgresql":
        connection.close_pool()


class Child:
    """A process of our own (its own session, so Ctrl-C reaches only us and we stop it)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)  # daphne takes ~2.5 s when idle, longer with calls in flight
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def first_error(self, lines: int = 12) -> str:
        """The end of the first traceback in the log (what a 500 hid), or ""."""
        logged = self.log.read_text(errors="replace").splitlines()
        start = next((n for n, line in enumerate(logged) if line.startswith("Traceback")), None)
        if start is None:
            return ""
        end = next(
            (n for n in range(start + 1, len(logged)) if logged[n] and logged[n][0] != " "),
            len(logged) - 1,
        )
        return "\n".join(logged[max(start, end - lines + 1) : end + 1])

    def cpu_seconds(self) -> float:
        """User and system CPU of the process and its descendants (uvicorn's workers)."""
        return cpu_seconds(self.proc.pid)


def cpu_seconds(pid: int, *, descendants: bool = True) -> float:
    """User and system CPU seconds of a process (and of its descendants)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            total += sum(int(v) for v in stat.rsplit(")", 1)[1].split()[11:13])
            for task in Path(f"/proc/{current}/task").iterdir() if descendants else ():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(child: Child, ready: Callable[[], str | None], *, seconds: float = 60) -> str:
    """What ``ready`` returns once it returns something (the child's URL); fails after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        child.check_alive()
        if found := ready():
            return found
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not start:\n{child.tail()}")


def start_fake_anthropic(argv: list[str], env: dict[str, str], log_dir: Path) -> tuple[Child, str]:
    """The fake Anthropic ``argv`` starts, once it has printed its ``FAKE_ANTHROPIC_URL``, and
    that URL."""
    fake = Child("fake-anthropic", argv, env, log_dir)

    def printed_url() -> str | None:
        found = re.search(r"FAKE_ANTHROPIC_URL=(\S+)", fake.log.read_text())
        return found.group(1) if found else None

    return fake, wait_ready(fake, printed_url)


def start_broker(var_dir: Path) -> Child | None:
    """``make run``'s private broker (a Redis server on a socket in ``var_dir``), once it
    answers; None when ``REDIS_URL`` names a Redis server, which is the broker then."""
    from config import broker

    if os.environ.get("REDIS_URL"):
        return None
    queue = Child("broker", broker.server_command(var_dir), dict(os.environ), var_dir)
    if not broker.wait_answers(broker.embedded_socket(var_dir), timeout=15):
        queue.stop()
        raise RuntimeError(f"the broker did not answer:\n{queue.tail()}")
    return queue


def start_console(
    env: dict[str, str], log_dir: Path, server: str, workers: int
) -> tuple[Child, str]:
    """The console, once healthy, served as ``make run`` serves its web process (daphne) or its
    gateway process (``gateway``: uvicorn with uvloop and httptools), or by plain uvicorn."""
    port = free_port()
    if server == "daphne":
        argv = ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    elif server == "gateway":
        from config.launch import gateway_command

        argv = gateway_command("127.0.0.1", port)
    else:
        argv = ["-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1"]
        # Access log on, as daphne's is: both servers as they run by default.
        argv += ["--port", str(port), "--workers", str(workers), "--lifespan", "off"]
    console = Child(server, [sys.executable, *argv], env, log_dir)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> str | None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health") as response:
            return url if response.status == 200 else None
        return None

    return console, wait_ready(console, healthy)


# --- Load ------------------------------------------------------------------------------------


class Failed(Exception):
    """A request or message other than the one expected (an unexpected status, a stream that did
    not end)."""


CLIENT_ERRORS = (Failed, aiohttp.ClientError, TimeoutError)


@dataclass
class Run(Generic[T]):
    """One measured run: its results in the order they ended, its failures, how long it took
    and the CPU each child process spent meanwhile."""

    results: list[T] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return len(self.results) / self.seconds

    def cpu_ms_each(self) -> dict[str, float]:
        """Each child's CPU milliseconds per result."""
        done = max(1, len(self.results))
        return {name: seconds / done * 1000 for name, seconds in self.cpu.items()}


async def closed_loop(
    one: Callable[[], Awaitable[T]], clients: int, seconds: float, children: list[Child]
) -> Run[T]:
    """``clients`` concurrent clients, each sending its next request when its last one ends;
    the CPU of ``children`` is measured meanwhile."""
    run: Run[T] = Run()
    cpu = {child.name: child.cpu_seconds() for child in children}
    started = time.perf_counter()
    end = started + seconds

    async def client() -> None:
        while time.perf_counter() < end:
            try:
                run.results.append(await one())
            except CLIENT_ERRORS as exc:
                run.errors.append(str(exc) or type(exc).__name__)

    await asyncio.gather(*(client() for _ in range(clients)))
    run.seconds = time.perf_counter() - started
    run.cpu = {child.name: child.cpu_seconds() - cpu[child.name] for child in children}
    return run


async def open_loop(
    one: Callable[[], Awaitable[object]],
    rate: float,
    seconds: float,
    in_flight: int,
    children: tuple[Child, ...] = (),
) -> Run[float]:
    """``rate`` requests a second at an even pace, at most ``in_flight`` at once; each latency
    counts from when its request was due, so queueing behind a slow server is not hidden. The
    CPU of ``children`` is measured meanwhile."""
    run: Run[float] = Run()
    slots = asyncio.Semaphore(in_flight)
    cpu = {child.name: child.cpu_seconds() for child in children}
    started = time.perf_counter()

    async def due_at(due: float) -> None:
        try:
            async with slots:
                await one()
            run.results.append((time.perf_counter() - due) * 1000)
        except CLIENT_ERRORS as exc:
            run.errors.append(str(exc) or type(exc).__name__)

    tasks = []
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(due_at(started + n / rate)))
    await asyncio.gather(*tasks)
    run.seconds = time.perf_counter() - started
    run.cpu = {child.name: child.cpu_seconds() - cpu[child.name] for child in children}
    return run
