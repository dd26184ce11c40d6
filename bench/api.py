"""Requests/s and latency of the console's HTTP API: an authenticated agent list, and spawn.

Starts the console as a separate process on loopback, against a fresh database, configured as
``make run`` ships it (metrics in multiprocess mode, every request counted against its user's
request rate, a budget on the user), with two users whose request rates and quotas are roomy
enough (a million a minute, thousands of agents) that what is measured is the API, not its
refusals. One aiohttp client in this process (one event loop, a warm-up before each run) drives
it, in two ways:

* open loop: requests sent at a fixed rate (``--rate``, 200 a second), each when it is due
  whether or not the ones before were answered, its latency counted from when it was due; a
  server that falls behind shows its queue in the figures (no coordinated omission). The server
  CPU per request (from /proc) is taken from this run;
* closed loop, with 16 and 64 concurrent clients, each sending its next request when its last
  one is answered: the most the server serves.

What is sent:

* list: ``GET /v1/agents/list`` (the Hypercore route) for a user with ``--agents`` running
  agents, written straight into the database, so every answer is a realistic page; the same
  page from ``GET /api/v1/agents``; and ``GET /api/v1/keys`` (a one-row list) beside them;
* spawn: ``POST /v1/agents/spawn`` with the process backend, by another user. Boots are only
  queued (no Celery worker runs, ``CELERY_TASK_ALWAYS_EAGER`` is unset), so its figure is the
  web process's own part: validation, the quota check, placement on the one registered sandbox
  host, the insert and the queueing on ``make run``'s broker (its private Redis server). A boot
  itself is ``bench/spawn.py``'s to time.

The CPU the server spent per request (from /proc) is shown with each run: it moves least when
other work shares the machine (the load average is shown at the start and the end).

    python bench/api.py [--quick] [--server daphne|gateway|uvicorn] [--workers N] [--agents N]
        [--database-url postgres://…/agent_console_bench_api] [--redis-url redis://…/N]
        [--rate R] [--seconds S]

The database is SQLite in a temporary folder, or the PostgreSQL database ``--database-url``
names, created (dropped first if it exists) and dropped at the end. With ``--redis-url``, the
console runs on that Redis (its rate counters, channel layer, cache and broker, as with
``REDIS_URL``; the bench deletes the keys it made, and no others); without, on ``make run``'s
private broker and the database's counters. The server is daphne, as
``make run`` runs its web process; or ``gateway``, the uvicorn process (uvloop, httptools, no
access log) ``make run`` runs beside it, which serves the same HTTP routes and can take the
API's traffic behind a proxy sending plain HTTP there; or plain uvicorn.

Ends with one line per target: ``TARGET <name> <value> <unit> <op> <target> PASS|FAIL``, and
spawn's figures on ``INFO`` lines, which have no target.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from harness import (
    CLIENT_ERRORS,
    Child,
    Failed,
    Run,
    close_database,
    closed_loop,
    console_environment,
    database_url,
    interrupt_on_signals,
    migrate,
    percentile,
    print_summary,
    report,
    scratch_database,
    start_console,
)

from config import broker

LEVELS = (16, 64)
HOST_NAME = "bench-api"
# Roomy, but set: each request is checked and counted as under the shipped default (100).
REQUESTS_PER_MINUTE = 1_000_000


# --- The database ------------------------------------------------------------------------------


def _redis_url(value: str) -> str:
    """``--redis-url``'s type: a redis:// URL."""
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError("must be a redis:// URL")
    return value


def _environment(var_dir: Path, database_url: str | None, redis_url: str | None) -> None:
    """The console's environment, in this process and so in the server's: ``make run``'s, with
    its metrics in multiprocess mode (each process writes them to files)."""
    metrics_dir = var_dir / "prometheus"
    metrics_dir.mkdir()
    console_environment(
        var_dir,
        database_url,
        # Boots stay queued: spawn is timed as the web process sees it.
        unset=("CELERY_TASK_ALWAYS_EAGER", "CELERY_BROKER_URL"),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        SANDBOX_STATE_DIR=str(var_dir / "sandboxes"),
        SANDBOX_BACKEND="process",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1",
        # No worker heartbeats the host registered below.
        SANDBOX_HOST_STALE_SECONDS="86400",
    )
    if redis_url:
        os.environ["REDIS_URL"] = redis_url


def _redis_clean() -> None:
    """Delete what a run leaves in ``REDIS_URL``'s database: the rate counters and the boots
    queued for the bench's host."""
    import redis
    from django.conf import settings

    from agents.models import SandboxHost
    from console.services.counters import PREFIX

    if not settings.REDIS_URL:
        return
    with redis.Redis.from_url(settings.REDIS_URL) as client:
        keys = [SandboxHost.queue_of(HOST_NAME), *client.scan_iter(f"{PREFIX}*", count=1000)]
        client.delete(*keys)


def _setup(agents: int) -> tuple[str, str]:
    """Migrate a fresh database, register a roomy sandbox host, and return the API keys of a
    user with ``agents`` running agents and of a user who spawns, both with roomy limits and a
    monthly budget."""
    migrate()
    _redis_clean()
    from django.conf import settings

    from agents.models import Agent
    from agents.services import host_register
    from console.models import Budget, Quota, User
    from console.services import api_key_create, quota_get

    host = host_register(
        name=HOST_NAME, backend="process", capacity_vcpus=1_000_000, capacity_memory_mib=2**31 - 1
    )
    keys = []
    for username in ("bench-list", "bench-spawn"):
        user = User.objects.create_user(username=username)
        quota_get(user=user)
        Quota.objects.filter(user=user).update(
            requests_per_minute=REQUESTS_PER_MINUTE,
            max_agents=1_000_000,
            max_total_vcpus=1_000_000,
            max_total_memory_mib=2**31 - 1,
        )
        Budget.objects.create(user=user, metric="usd", window="month", limit=1_000_000)
        keys.append(api_key_create(user=user, name="bench")[1])
    owner = User.objects.get(username="bench-list")
    Agent.objects.bulk_create(
        Agent(
            owner=owner,
            name=f"agent-{n}",
            model=settings.DEFAULT_AGENT_MODEL,
            system_prompt="You are a benchmark.",
            status=Agent.Status.RUNNING,
            backend="process",
            host=host,
            sandbox_id=f"bench-{n}",
            endpoint=f"http://127.0.0.1:{20000 + n}",
        )
        for n in range(agents)
    )
    close_database()
    return keys[0], keys[1]


def _spawned() -> tuple[int, int]:
    """Agents the spawn runs recorded, and boots queued on the broker."""
    import redis
    from django.conf import settings

    from agents.models import Agent, SandboxHost

    agents = Agent.objects.filter(owner__username="bench-spawn").count()
    close_database()
    if settings.REDIS_URL:
        client = redis.Redis.from_url(settings.REDIS_URL)
    else:
        client = redis.Redis(unix_socket_path=str(broker.embedded_socket(settings.VAR_DIR)))
    with client:
        queued = int(client.llen(SandboxHost.queue_of(HOST_NAME)))
    return agents, queued


# --- Load --------------------------------------------------------------------------------------


async def _request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    key: str,
    expect: int,
    body: bytes | None = None,
) -> float:
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    started = time.perf_counter()
    async with session.request(method, url, data=body, headers=headers) as response:
        data = await response.read()
        if response.status != expect:
            raise Failed(f"{method} {url}: HTTP {response.status}: {data[:300]!r}")
    return (time.perf_counter() - started) * 1000


async def open_loop(
    send: Callable[[], Awaitable[object]], rate: float, seconds: float, children: list[Child]
) -> Run[float]:
    """``rate`` requests a second for ``seconds``, each sent when it is due (the i-th at
    ``i / rate`` s) whether or not those before it were answered; its latency, in ms, runs from
    when it was due, so a queue in the server (or in this client) shows. The CPU of
    ``children`` is measured meanwhile."""
    run: Run[float] = Run()
    cpu = {child.name: child.cpu_seconds() for child in children}
    started = time.perf_counter()

    async def one(due: float) -> None:
        try:
            await send()
        except CLIENT_ERRORS as exc:
            run.errors.append(str(exc) or type(exc).__name__)
            return
        run.results.append((time.perf_counter() - due) * 1000)

    tasks = []
    for n in range(round(rate * seconds)):
        due = started + n / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    run.seconds = time.perf_counter() - started
    run.cpu = {child.name: child.cpu_seconds() - cpu[child.name] for child in children}
    return run


# --- Figures -----------------------------------------------------------------------------------


def _describe_open(rate: float, run: Run[float]) -> str:
    p50, p95, p99 = (percentile(run.results, q) for q in (50, 95, 99))
    cpu = sum(run.cpu_ms_each().values())
    line = (
        f"  {rate:g} req/s offered: {run.rps:.0f} answered, p50 {p50:.1f} p95 {p95:.1f} "
        f"p99 {p99:.1f} ms (from when each was due); server CPU {cpu:.2f} ms per request"
    )
    if run.errors:
        line += f"\n     {len(run.errors)} failed, e.g. {run.errors[0][:300]}"
    return line


def _describe(clients: int, run: Run[float]) -> str:
    p50, p95, p99 = (percentile(run.results, q) for q in (50, 95, 99))
    cpu = sum(run.cpu_ms_each().values())
    line = (
        f"  {clients:>2} clients: {run.rps:.0f} req/s, p50 {p50:.1f} p95 {p95:.1f} "
        f"p99 {p99:.1f} ms; server CPU {cpu:.2f} ms per request"
    )
    if run.errors:
        line += f"\n     {len(run.errors)} failed, e.g. {run.errors[0][:300]}"
    return line


# --- The bench ---------------------------------------------------------------------------------


@dataclass
class _Bench:
    session: aiohttp.ClientSession
    url: str
    server: Child
    seconds: float
    warmup: float
    rate: float
    targets: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    async def measure(
        self, title: str, one: Callable[[], Awaitable[float]]
    ) -> dict[int, Run[float]]:
        print(f"\n{title} (closed loop)", flush=True)
        runs = {}
        for clients in LEVELS:
            await closed_loop(one, clients, self.warmup, [])
            runs[clients] = await closed_loop(one, clients, self.seconds, [self.server])
            print(_describe(clients, runs[clients]), flush=True)
        return runs

    async def lists(self, key: str, agents: int) -> None:
        url = f"{self.url}/v1/agents/list"
        async with self.session.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
            page = json.loads(await response.read())
        assert page.get("count") == agents, f"the list answered {page!r:.300}"

        def one() -> Awaitable[float]:
            return _request(self.session, "GET", url, key, 200)

        print(f"\nGET /v1/agents/list ({agents} agents a page, open loop)", flush=True)
        await open_loop(one, self.rate, self.warmup, [])
        run = await open_loop(one, self.rate, self.seconds, [self.server])
        print(_describe_open(self.rate, run), flush=True)
        cpu = sum(run.cpu_ms_each().values())
        # A request that failed was never answered: it counts as slower than any that was.
        p95 = percentile(run.results + [math.inf] * len(run.errors), 95)
        self.targets.append(report("api_agent_list_cpu_per_request", cpu, "ms", "<=", 2))
        self.targets.append(report("api_agent_list_open_loop_p95", p95, "ms", "<=", 50))

        runs = await self.measure(
            f"GET /v1/agents/list ({agents} agents a page)",
            lambda: _request(self.session, "GET", url, key, 200),
        )
        run = runs[64]
        self.targets.append(report("api_list_rps_64clients", run.rps, "req/s", ">=", 500))
        self.targets.append(
            report("api_list_p95_64clients", percentile(run.results, 95), "ms", "<=", 50)
        )
        v1_url = f"{self.url}/api/v1/agents?page_size={agents}"
        await self.measure(
            f"GET /api/v1/agents ({agents} agents a page, cursor-paginated)",
            lambda: _request(self.session, "GET", v1_url, key, 200),
        )
        keys_url = f"{self.url}/api/v1/keys"
        await self.measure(
            "GET /api/v1/keys (one key a page)",
            lambda: _request(self.session, "GET", keys_url, key, 200),
        )

    async def spawn(self, key: str) -> None:
        url = f"{self.url}/v1/agents/spawn"
        body = json.dumps(
            {"user_id": "bench-spawn", "cores": 1, "memory": 128, "max_concurrent": 5}
        ).encode()
        runs = await self.measure(
            "POST /v1/agents/spawn (process backend; the boot only queued)",
            lambda: _request(self.session, "POST", url, key, 201, body),
        )
        for clients, run in runs.items():
            p95 = percentile(run.results, 95)
            self.info.append(f"INFO api_spawn_rps_{clients}clients {run.rps:.1f} req/s")
            self.info.append(f"INFO api_spawn_p95_{clients}clients {p95:.1f} ms")


async def _measure(
    args: argparse.Namespace, server: Child, url: str, list_key: str, spawn_key: str
) -> _Bench:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        bench = _Bench(session, url, server, args.seconds, args.warmup, args.rate)
        await bench.lists(list_key, args.agents)
        await bench.spawn(spawn_key)
    return bench


def _server_label(args: argparse.Namespace) -> str:
    if args.server == "daphne":
        return "daphne"
    if args.server == "gateway":
        return "make run's gateway process (uvicorn, uvloop, httptools)"
    # uvicorn takes uvloop and httptools when they are installed, asyncio and h11 otherwise.
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn ({args.workers} workers, {http}, {loop})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--server", choices=("daphne", "gateway", "uvicorn"), default="daphne")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--agents", type=int, default=50, help="agents on the listed page")
    parser.add_argument(
        "--database-url", type=database_url, help="a PostgreSQL database to create, use and drop"
    )
    parser.add_argument(
        "--redis-url", type=_redis_url, help="a Redis database to run on (as REDIS_URL)"
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="open loop: requests a second (default 200)"
    )
    parser.add_argument("--seconds", type=float, help="per measured run (default 8; quick 2)")
    args = parser.parse_args()
    if args.workers != 1 and args.server != "uvicorn":
        parser.error("--workers needs --server uvicorn (daphne runs one process)")
    args.seconds = args.seconds or (2.0 if args.quick else 8.0)
    args.warmup = 0.5 if args.quick else 1.5
    interrupt_on_signals()

    began = time.perf_counter()
    server: Child | None = None
    queue: Child | None = None
    with (
        scratch_database(args.database_url),
        tempfile.TemporaryDirectory(prefix="bench-api-") as tmp,
    ):
        try:
            var_dir = Path(tmp)
            _environment(var_dir, args.database_url, args.redis_url)
            list_key, spawn_key = _setup(args.agents)
            if not args.redis_url:
                argv = broker.server_command(var_dir)
                queue = Child("broker", argv, dict(os.environ), var_dir)
                if not broker.wait_answers(broker.embedded_socket(var_dir), timeout=15):
                    raise RuntimeError(f"the broker did not answer:\n{queue.tail()}")
            server, url = start_console(dict(os.environ), var_dir, args.server, args.workers)
            from django.db import connection

            print(
                f"API on {_server_label(args)}, database {connection.vendor}"
                f"{' + Redis' if args.redis_url else ''}, "
                f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); "
                f"{args.seconds:g} s per run",
                flush=True,
            )
            bench = asyncio.run(_measure(args, server, url, list_key, spawn_key))
            agents, queued = _spawned()
            print(f"\nspawn: {agents} agents recorded, {queued} boots queued on the broker")
            server.check_alive()  # a crash under load would void the figures
            if error := server.first_error():
                print(f"\nthe console logged errors; the first ends:\n{error}")
        finally:
            if server is not None:
                server.stop()
            if queue is not None:
                queue.stop()
            _redis_clean()
    print_summary(began, bench.info + bench.targets)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; the console is stopped")
