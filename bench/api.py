"""Requests/s and latency of the console's HTTP API: an authenticated agent list, and spawn.

Starts the console as a separate process on loopback, against a fresh database, in the
configuration ``make run`` ships (``harness.console_environment``: its environment, multiprocess
metrics, its private broker), with two users whose quotas keep the default checks, with limits
no run reaches, and a daily USD budget (``harness.user_limits``), and room for thousands of
agents, so that what is measured is the API, not its refusals. ``--lean`` measures the stripped
console the bench once ran: no multiprocess metrics, no limits, no budget. One aiohttp client in
this process (one event loop, closed loop, a warm-up before each run) drives it with 16 and 64
concurrent clients:

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

The list's targets: 500 requests/s at 64 clients; at most 2 ms of server CPU per request (what
500 a second on one core leaves); and p95 ≤ 50 ms with 500 requests/s offered at an even pace
(open loop, at most 64 in flight). The last replaces "p95 ≤ 50 ms at 64 clients": with 64
clients in a closed loop 64 requests always wait, so by Little's law that p95 is at least
64 / throughput (128 ms at 500 requests/s) whatever the server does.

    python bench/api.py [--quick] [--server daphne|gateway|uvicorn] [--workers N] [--agents N]
        [--lean] [--database-url postgres://…/agent_console_bench_api]
        [--redis-url redis://127.0.0.1:6379/N] [--seconds S]

The database is SQLite in a temporary folder, or the PostgreSQL database ``--database-url``
names, created (dropped first if it exists) and dropped at the end; with ``--redis-url`` that
Redis database (flushed before and after) is the cache and the broker, as ``REDIS_URL`` makes it
for ``make run``. The server is daphne, as
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
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from harness import (
    Child,
    Failed,
    Run,
    add_console_arguments,
    close_database,
    closed_loop,
    console_environment,
    interrupt_on_signals,
    migrate,
    open_loop,
    percentile,
    print_summary,
    report,
    scratch_database,
    scratch_redis,
    start_broker,
    start_console,
    user_limits,
)

from config import broker

LEVELS = (16, 64)
LIST_RATE = 500  # list requests a second the API serves, with p95 <= 50 ms
HOST_NAME = "bench-api"


# --- The database ------------------------------------------------------------------------------


def _environment(var_dir: Path, args: argparse.Namespace) -> None:
    """The console's environment, in this process and so in the server's."""
    console_environment(
        var_dir,
        args.database_url,
        redis_url=args.redis_url,
        lean=args.lean,
        # Boots stay queued: spawn is timed as the web process sees it.
        unset=("CELERY_TASK_ALWAYS_EAGER",),
        SANDBOX_STATE_DIR=str(var_dir / "sandboxes"),
        SANDBOX_BACKEND="process",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1",
        # No worker heartbeats the host registered below.
        SANDBOX_HOST_STALE_SECONDS="86400",
    )


def _setup(agents: int, *, lean: bool) -> tuple[str, str]:
    """Migrate a fresh database, register a roomy sandbox host, and return the API keys of a
    user with ``agents`` running agents and of a user who spawns, both with the shipped limits
    (none with ``lean``) and room for thousands of agents."""
    migrate()
    from django.conf import settings

    from agents.models import Agent
    from agents.services import host_register
    from console.models import User
    from console.services import api_key_create

    host = host_register(
        name=HOST_NAME, backend="process", capacity_vcpus=1_000_000, capacity_memory_mib=2**31 - 1
    )
    keys = []
    for username in ("bench-list", "bench-spawn"):
        user = User.objects.create_user(username=username)
        user_limits(
            user.id,
            lean=lean,
            max_agents=1_000_000,
            max_total_vcpus=1_000_000,
            max_total_memory_mib=2**31 - 1,
        )
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


# --- Figures -----------------------------------------------------------------------------------


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
        runs = await self.measure(
            f"GET /v1/agents/list ({agents} agents a page)",
            lambda: _request(self.session, "GET", url, key, 200),
        )
        run = runs[64]
        self.targets.append(report("api_list_rps_64clients", run.rps, "req/s", ">=", LIST_RATE))
        cpu = sum(run.cpu_ms_each().values())
        self.targets.append(
            report("api_list_cpu_per_request", cpu, "ms", "<=", 1000 / LIST_RATE, digits=2)
        )
        paced = await open_loop(
            lambda: _request(self.session, "GET", url, key, 200),
            LIST_RATE,
            self.seconds,
            max(LEVELS),
            (self.server,),
        )
        p50, p95 = (percentile(paced.results, q) for q in (50, 95))
        print(
            f"  {LIST_RATE} req/s offered (open loop, at most {max(LEVELS)} in flight): "
            f"{paced.rps:.0f} req/s done, p50 {p50:.1f} p95 {p95:.1f} ms"
            + (f", {len(paced.errors)} failed" if paced.errors else ""),
            flush=True,
        )
        if paced.errors:
            p95 = float("inf")  # a request refused at this rate is not a fast one
        self.targets.append(report(f"api_list_p95_{LIST_RATE}rps", p95, "ms", "<=", 50))
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
        bench = _Bench(session, url, server, args.seconds, args.warmup)
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
    add_console_arguments(parser)
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
        scratch_redis(args.redis_url),
        tempfile.TemporaryDirectory(prefix="bench-api-") as tmp,
    ):
        try:
            var_dir = Path(tmp)
            _environment(var_dir, args)
            list_key, spawn_key = _setup(args.agents, lean=args.lean)
            queue = start_broker(var_dir)
            server, url = start_console(dict(os.environ), var_dir, args.server, args.workers)
            from django.db import connection

            shipped = "lean" if args.lean else "as shipped (multiprocess metrics, limits checked)"
            print(
                f"API on {_server_label(args)}, {shipped}, database {connection.vendor}, "
                f"{'Redis' if args.redis_url else 'no Redis'}, "
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
    print_summary(began, bench.info + bench.targets)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; the console is stopped")
