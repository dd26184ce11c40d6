"""The seed's load test: thousands of people chatting with a pool of shared agents, through
``make run``'s console, with locust.

    python bench/load.py [--quick] [--users N] [--duration S] [--ramp-up S] [--agents A]
        [--think MIN MAX] [--sse-share F] [--ws-share F] [--chunk-delay-ms MS]
        [--quotas operator|shipped] [--database-url postgres://…/ac_load]
        [--redis-url redis://127.0.0.1:6379/N]
    python bench/load.py --api-url URL --key KEY [--key KEY …] [--cookie COOKIE …] [...]

The flags are Hypercore's load test's (``--users``, ``--duration``, ``--ramp-up``,
``--api-url``): ``--users`` people (1,000; ``--quick`` 50) start evenly over ``--ramp-up``
seconds (60; quick 5) and chat until ``--duration`` seconds (300; quick 15) have passed since
the first started. What each person does is ``bench/load_users.py``'s: find their account's
agent (the account's first person spawns it; the others reuse it), open a session of their own,
then send a turn, wait for the whole reply, think ``--think`` seconds (uniform, 5 to 15: ~10
seconds a turn, the seed's 10,000 people making 1,000 requests a second), and again. A share of
people use the Hypercore chat route as JSON, a share (``--sse-share``, 0.3) as server-sent
events, and a share (``--ws-share``, 0.3) the chat WebSocket.

Without ``--api-url`` it starts, on loopback, what ``make run`` starts (``python -m
config.launch``: web on daphne, the gateway on uvicorn, the Celery worker and beat, the broker;
agents on the default sandbox backend, each reaching Claude through the gateway), in the shipped
configuration; only its Anthropic is the fake (``tests.fakes.anthropic``, in a process of its
own), pausing ``--chunk-delay-ms`` (50) before each streamed delta but the first. The database
is SQLite in a temporary folder, or the PostgreSQL database ``--database-url`` names (created,
dropped first if it exists, and dropped at the end); ``--redis-url`` makes that Redis database
the broker, channel layer and cache (flushed before and after), as the README's PostgreSQL and
Redis set-up has it.

The people belong to ``--agents`` accounts (default: as many agents as this host's shipped
sandbox capacity holds at one vCPU each, four per core), one agent each, as a team shares an
agent: each person has an API key of their own on their team's account, and the WebSocket's
people sign in with the account's session cookie. Each account has a $50 daily budget. Its
rate limits are, with ``--quotas operator`` (the default), what an operator gives a team: the
shipped per-user limits (100 requests a minute, 50 gateway calls in flight, 100 open sessions)
for each of its people, with the shipped 100 requests a minute on each person's key; with
``--quotas shipped``, the shipped per-user limits for the whole account, which people thinking
10 seconds between turns exceed (a turn is at least two requests: the chat, and the agent's
call through the gateway, both counted to the account).

``--api-url`` drives a console already running instead: each ``--key`` is an account (an API
key whose owner may spawn one agent named ``bench-load``, or has one running), shared by the
people in turn; the WebSocket's share needs a ``--cookie sessionid=…`` per key (a signed-in
browser's), and goes over server-sent events without. Upstream time is then subtracted as
``--chunk-delay-ms`` says, which only holds if that console's Anthropic is such a fake; and
the console's CPU is not measured.

What is measured, per turn, from sending it to the end of its reply: the whole time, less the
fake Anthropic's designed pauses ((deltas - 1) x ``--chunk-delay-ms``; see
``bench/load_users.py``). Reported: turns a second (over the run, and after the ramp-up),
p50/p95/p99 of that time per kind and overall, the error rate (failed turns, and people who
could not start, over both), the errors by kind, the agents' boot times, and the CPU seconds
each part used over the steady state, from some 20 s after the ramp-up to the end (from /proc):
the console (web, gateway, worker, beat and broker, the agents' runtimes, PostgreSQL's processes
serving its database), the fake, and locust (over the whole run). People per core is the people
divided by the cores the console used, a capacity only in a run that met the targets.

Ends with one line per target (the seed's: ``Success rate > 99%``, ``Request latency p95 < 2
seconds (excluding Claude API time)``, ``p99 < 5 seconds``): ``TARGET <name> <value> <unit>
<op> <target> PASS|FAIL``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness import (
    ROOT,
    Child,
    close_database,
    console_environment,
    cpu_seconds,
    database_url,
    free_port,
    interrupt_on_signals,
    percentile,
    print_summary,
    report,
    scratch_database,
    start_fake_anthropic,
    wait_ready,
)

KINDS = ("json", "sse", "ws")
BUDGET_USD = 50
SHIPPED_RPM = 100
SHIPPED_CONCURRENT = 50
SHIPPED_SESSIONS = 100
# The launcher's processes, by words of their command lines (``config.launch``).
PROCESSES = {
    "web": ("config.web", "daphne"),  # daphne, on uvloop (config.web)
    "gateway": ("gateway_application",),
    "worker": (" worker ",),
    "beat": (" beat ",),
    "broker": ("redis-server",),
}
STEADY_AFTER_RAMP_UP = 20.0  # seconds: the last agents' boots, under load, take ~10


# --- Processes ---------------------------------------------------------------------------------


def _tree(pid: int) -> set[int]:
    """A process and its descendants."""
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def _named(pids: set[int], words: tuple[str, ...]) -> set[int]:
    """Those of ``pids`` whose command line has one of ``words`` (none: those with none of
    the launcher's processes' words)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if (
                any(w in argv for w in words)
                if words
                else not any(w in argv for names in PROCESSES.values() for w in names)
            ):
                found.add(pid)
    return found


def _cpu_of(pids: set[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            found[pid] = cpu_seconds(pid, descendants=False)
    return found


@dataclass
class _Parts:
    """The processes of each part of the system, and their CPU seconds between two readings
    (processes alive at both: one that ended or started meanwhile is left out)."""

    find: dict[str, Any]  # name -> () -> set of pids
    start: dict[str, dict[int, float]] = field(default_factory=dict)
    began: float = 0.0

    def begin(self) -> None:
        self.began = time.monotonic()
        self.start = {name: _cpu_of(pids()) for name, pids in self.find.items()}

    def spent(self) -> tuple[float, dict[str, float]]:
        wall = time.monotonic() - self.began
        spent = {}
        for name, pids in self.find.items():
            now = _cpu_of(pids())
            before = self.start[name]
            spent[name] = sum(now[p] - before[p] for p in now.keys() & before.keys())
        return wall, spent


class _Console:
    """``python -m config.launch`` in its own session, stopped as Ctrl-C stops it."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port, self.gateway_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = env | {"PORT": str(self.port), "GATEWAY_PORT": str(self.gateway_port)}
        self.child = Child("console", [sys.executable, "-m", "config.launch"], env, log_dir)

    def wait_healthy(self) -> None:
        for url in (self.url, f"http://127.0.0.1:{self.gateway_port}"):

            def healthy(url: str = url) -> str | None:
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"{url}/health") as response,
                ):
                    return url if response.status == 200 else None
                return None

            wait_ready(self.child, healthy)

    def stop(self) -> None:
        proc = self.child.proc
        if proc.poll() is None:
            # The launcher stops its processes (each in its own session) itself.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                for pid in _tree(proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()


def _raise_file_limit() -> None:
    """As many open files as allowed, for this process and those it starts."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _flush_redis(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()


# --- The accounts ------------------------------------------------------------------------------


def _accounts(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--agents`` accounts with their quotas and budget, a key for each person, and a
    session cookie per account; the people, each with their account, key and kind of chat."""
    from django.test import Client

    from console.models import ApiKey, Budget, User
    from console.services import api_key_create, quota_get

    per_account = -(-args.users // args.agents)
    accounts = []
    for n in range(args.agents):
        user = User.objects.create_user(username=f"load-team-{n}")
        quota = quota_get(user=user)
        if args.quotas == "operator":
            quota.requests_per_minute = SHIPPED_RPM * per_account
            quota.concurrent_requests = max(SHIPPED_CONCURRENT, per_account)
            quota.max_concurrent_sessions = max(SHIPPED_SESSIONS, per_account)
            quota.save()
        Budget.objects.create(
            user=user, metric=Budget.Metric.USD, window=Budget.Window.DAY, limit=BUDGET_USD
        )
        browser = Client()
        browser.force_login(user)
        accounts.append((user, f"sessionid={browser.cookies['sessionid'].value}"))
    people = []
    for n in range(args.users):
        user, cookie = accounts[n % args.agents]
        key, raw = api_key_create(user=user, name=f"person {n}")
        if args.quotas == "operator":
            ApiKey.objects.filter(pk=key.pk).update(requests_per_minute=SHIPPED_RPM)
        people.append({"account": user.username, "key": raw, "cookie": cookie})
    close_database()
    return people


def _host_online() -> str | None:
    from agents.models import SandboxHost

    online = SandboxHost.objects.exists()
    close_database()
    return "yes" if online else None


def _sandbox_pids() -> set[int]:
    from agents import sandbox

    found: set[int] = set()
    for status in sandbox.driver().list():
        if status.pid:
            found |= _tree(status.pid)
    return found


def _postgres_pids(url: str | None) -> set[int]:
    """The PostgreSQL server processes serving the database ``url`` names, by their titles
    (``postgres: [<cluster>: ]<user> <database> <client> <state>``): asking the server would
    take a connection, which a busy server may not have to give."""
    if not url:
        return set()
    name = urlparse(url).path.lstrip("/")
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                served = re.match(r"postgres: (?:\S+: )?\S+ (\S+) ", title)
                if served and served.group(1) == name:
                    found.add(int(proc.name))
    return found


def _destroy_sandboxes(state_dir: Path) -> None:
    """Stop every sandbox this run started, whatever state it ended in."""
    from vmdriver import make_driver

    if state_dir.is_dir():
        driver = make_driver("process", state_dir=state_dir, isolation="none")
        for status in driver.list():
            with contextlib.suppress(Exception):
                driver.destroy(status.id)


# --- The people --------------------------------------------------------------------------------


def _kinds(args: argparse.Namespace, people: list[dict[str, Any]]) -> None:
    """Give each person a kind of chat, the shares spread evenly over the accounts."""
    sse_until = args.sse_share
    ws_until = args.sse_share + args.ws_share
    for n, person in enumerate(people):
        at = (n * 0.6180339887) % 1  # evenly spread, whatever the order
        kind = "sse" if at < sse_until else "ws" if at < ws_until else "json"
        if kind == "ws" and not person.get("cookie"):
            kind = "sse"
        person["kind"] = kind
        person["name"] = f"p{n}"


def _run_people(
    args: argparse.Namespace,
    url: str,
    people: list[dict[str, Any]],
    var_dir: Path,
    parts: _Parts | None = None,
) -> dict[str, Any]:
    """Run the people in a locust process; its results, with the steady window's CPU when
    ``parts`` are given (``window``: its start, on the monotonic clock, and seconds)."""
    plan = {
        "url": url,
        "users": people,
        "user_count": args.users,
        "spawn_rate": args.users / max(args.ramp_up, 0.1),
        "seconds": args.duration,
        "think": args.think,
        "chunk_delay": args.chunk_delay_ms / 1000,
        "sessions_per_agent": -(-args.users // len({p["account"] for p in people})) + 10,
    }
    plan_file, results_file = var_dir / "plan.json", var_dir / "results.json"
    plan_file.write_text(json.dumps(plan))
    argv = [sys.executable, str(ROOT / "bench" / "load_users.py"), str(plan_file)]
    locust = Child("locust", [*argv, str(results_file)], dict(os.environ), var_dir)
    spent: dict[str, float] = {}
    try:
        if parts is not None:
            # Everyone has started and every agent has booted: the steady state from here.
            steady = min(args.ramp_up + STEADY_AFTER_RAMP_UP, args.duration / 2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                locust.proc.wait(steady)
            parts.begin()
        locust.proc.wait()
        if parts is not None:
            wall, spent = parts.spent()
    finally:
        locust.stop()
    if locust.proc.returncode or not results_file.exists():
        raise RuntimeError(f"locust failed:\n{locust.tail()}")
    results: dict[str, Any] = json.loads(results_file.read_text())
    if parts is not None:
        results["window"] = [parts.began, wall]
        results["spent"] = spent | {"locust": results["cpu"]}
    return results


# --- Figures -----------------------------------------------------------------------------------


def _error_kinds(errors: list[str]) -> list[tuple[str, int]]:
    shapes = Counter(re.sub(r"[0-9a-f-]{8,}|\d+(\.\d+)?", "#", e)[:160] for e in errors)
    return shapes.most_common(6)


def _describe(args: argparse.Namespace, results: dict[str, Any]) -> list[str]:
    """Print the run's figures; the TARGET lines."""
    turns = results["turns"]
    setup_errors = results["setup_errors"]
    seconds = results["ended"] - results["started"]
    ramp_end = results["started"] + args.ramp_up
    ok = [t for t in turns if not t[4]]
    failed = [t for t in turns if t[4]]
    steady = [t for t in ok if t[1] >= ramp_end]
    steady_seconds = max(1e-9, results["ended"] - ramp_end)
    print(
        f"\n{len(turns)} turns in {seconds:.0f} s: {len(ok) / seconds:.1f} turns/s completed "
        f"over the run, {len(steady) / steady_seconds:.1f} turns/s after the ramp-up"
    )
    for kind in (*KINDS, "all"):
        mine = [t for t in turns if kind in ("all", t[0])]
        if not mine:
            continue
        times = [t[2] - t[3] for t in mine if not t[4]]
        upstream = percentile([t[3] for t in mine], 50)
        p50, p95, p99 = (percentile(times, q) / 1000 for q in (50, 95, 99))
        errors = sum(1 for t in mine if t[4])
        print(
            f"  {kind:>4}: {len(mine)} turns, {errors} failed; excluding upstream "
            f"p50 {p50:.2f} p95 {p95:.2f} p99 {p99:.2f} s (upstream {upstream / 1000:.2f} s "
            "a turn, subtracted)"
        )
    if failed or setup_errors:
        print("  errors by kind:")
        for shape, count in _error_kinds([f"{t[0]}: {t[4]}" for t in failed] + setup_errors):
            print(f"    {count:>5} x {shape}")
    if reconnects := results["reconnects"]:
        print(f"  {len(reconnects)} sockets refused or dropped and opened again, e.g.:")
        for shape, count in _error_kinds(reconnects):
            print(f"    {count:>5} x {shape}")
    spawns = [s[1] / 1000 for s in results["spawns"]]
    if spawns:
        print(
            f"  {len(spawns)} agents spawned: boot (spawn to running) p50 "
            f"{percentile(spawns, 50):.1f} s, max {max(spawns):.1f} s"
        )
    times = [t[2] - t[3] for t in ok]
    p95, p99 = (percentile(times, q) / 1000 for q in (95, 99))
    attempts = len(turns) + len(setup_errors)
    error_pct = (len(failed) + len(setup_errors)) / max(1, attempts) * 100
    print(
        f"  error rate {error_pct:.2f} % ({len(failed)} failed turns and {len(setup_errors)} "
        f"people who could not start, of {attempts})"
    )
    return [
        report("load_error_rate", error_pct, "%", "<=", 1),
        report("load_p95", p95, "s", "<=", 2),
        report("load_p99", p99, "s", "<=", 5),
    ]


def _describe_cpu(args: argparse.Namespace, results: dict[str, Any], *, met: bool) -> None:
    """The steady window's turns and the cores each part used meanwhile (locust's over the
    whole run); people per core, a capacity only where the targets were ``met``."""
    began, wall = results["window"]
    spent = results["spent"]
    ended = [t for t in results["turns"] if not t[4] and began <= t[1] + t[2] / 1000]
    run_seconds = results["ended"] - results["started"]
    shares = ", ".join(
        f"{name} {seconds / (run_seconds if name == 'locust' else wall):.2f}"
        for name, seconds in spent.items()
    )
    console = sum(v for k, v in spent.items() if k not in ("fake", "locust"))
    cores = console / wall
    print(
        f"  steady state, the last {wall:.0f} s: {len(ended) / wall:.1f} turns/s; cores used: "
        f"{shares}; {os.cpu_count()} cores on this machine"
    )
    print(
        f"  the console used {cores:.2f} cores ({console / max(1, len(ended)) * 1000:.0f} ms "
        f"of CPU a turn) for {args.users} people: {args.users / max(cores, 1e-9):.0f} people "
        "per core" + ("" if met else " (the targets were not met: they were not all served)")
    )


# --- The bench ---------------------------------------------------------------------------------


def _local(args: argparse.Namespace, var_dir: Path) -> list[str]:
    """Start the fake and the console in ``var_dir``, set up the people, run them, and stop
    it all again; the TARGET lines."""
    console_environment(
        var_dir,
        args.database_url,
        unset=(
            "PROMETHEUS_MULTIPROC_DIR",
            "CELERY_TASK_ALWAYS_EAGER",
            "ANTHROPIC_API_KEY_FILE",
            "GATEWAY_URL",
            "PORT",
            "GATEWAY_PORT",
        ),
        TMPDIR=str(var_dir),
    )
    if args.redis_url:
        os.environ["REDIS_URL"] = args.redis_url
    key = f"sk-ant-load-{secrets.token_hex(8)}"
    fake_argv = [sys.executable, "-m", "tests.fakes.anthropic", "--port", "0", "--api-key", key]
    fake_argv += ["--chunk-delay", str(args.chunk_delay_ms / 1000)]
    fake: Child | None = None
    console: _Console | None = None
    try:
        began = time.monotonic()
        fake, fake_url = start_fake_anthropic(fake_argv, dict(os.environ), var_dir)
        env = dict(os.environ) | {"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": fake_url}
        console = _Console(env, var_dir)
        console.wait_healthy()
        import django  # the console's settings are this process's only from here

        django.setup()
        wait_ready(console.child, _host_online)
        up = time.monotonic() - began
        people = _accounts(args)
        _kinds(args, people)
        from django.db import connection

        print(
            f"make run's console (config.launch) up in {up:.1f} s on {console.url}, people set "
            f"up in {time.monotonic() - began - up:.1f} s; database {connection.vendor}, "
            f"{'Redis' if args.redis_url else 'the embedded broker, in-memory channel layer'}; "
            f"{args.users} people over {args.agents} agents, ramp-up {args.ramp_up:g} s, "
            f"run {args.duration:g} s, think {args.think[0]:g}-{args.think[1]:g} s, "
            f"quotas {args.quotas}; {os.cpu_count()} CPUs, load average "
            f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}",
            flush=True,
        )
        launcher, fake_pid = console.child.proc.pid, fake.proc.pid

        def launched() -> set[int]:
            # The worker starts the agents' sandboxes: they are in the launcher's tree.
            return _tree(launcher) - _sandbox_pids()

        named: dict[str, Any] = {
            name: lambda words=words: _named(launched(), words) for name, words in PROCESSES.items()
        }
        parts = _Parts(
            named
            | {
                "launcher": lambda: _named(launched(), ()),
                "agents": _sandbox_pids,
                "postgres": lambda: _postgres_pids(args.database_url),
                "fake": lambda: _tree(fake_pid),
            }
        )
        results = _run_people(args, console.url, people, var_dir, parts)
        targets = _describe(args, results)
        _describe_cpu(args, results, met=all(line.endswith("PASS") for line in targets))
        console.child.check_alive()
        if error := console.child.first_error():
            print(f"\nthe console logged errors; the first ends:\n{error}")
        return targets
    finally:
        stopping = time.monotonic()
        if console is not None:
            console.stop()
            print(f"the console stopped in {time.monotonic() - stopping:.1f} s")
        if fake is not None:
            fake.stop()
        _destroy_sandboxes(var_dir / "sandboxes")
        with contextlib.suppress(Exception):
            close_database()


def _remote(args: argparse.Namespace, var_dir: Path) -> list[str]:
    people = [
        {
            "account": f"key{n % len(args.key)}",
            "key": args.key[n % len(args.key)],
            "cookie": args.cookie[n % len(args.key)] if len(args.cookie) == len(args.key) else "",
        }
        for n in range(args.users)
    ]
    _kinds(args, people)
    print(f"the console at {args.api_url}; {args.users} people over {len(args.key)} keys")
    results = _run_people(args, args.api_url.rstrip("/"), people, var_dir)
    return _describe(args, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 people for 15 s")
    parser.add_argument("--users", type=int, help="people (default 1000; quick 50)")
    parser.add_argument("--duration", type=float, help="seconds, ramp-up included (300; 15)")
    parser.add_argument("--ramp-up", type=float, help="seconds to start everyone (60; quick 5)")
    parser.add_argument("--agents", type=int, help="agents and accounts (default 4 per core)")
    parser.add_argument("--think", type=float, nargs=2, default=(5.0, 15.0), metavar=("MIN", "MAX"))
    parser.add_argument("--sse-share", type=float, default=0.3, help="people on SSE")
    parser.add_argument("--ws-share", type=float, default=0.3, help="people on the WebSocket")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=50.0, help="the fake's pause between deltas"
    )
    parser.add_argument("--quotas", choices=("operator", "shipped"), default="operator")
    parser.add_argument(
        "--database-url", type=database_url, help="a PostgreSQL database to create, use and drop"
    )
    parser.add_argument("--redis-url", help="a Redis database to use and flush (before and after)")
    parser.add_argument("--api-url", help="a running console to drive instead")
    parser.add_argument("--key", action="append", default=[], help="with --api-url: an API key")
    parser.add_argument(
        "--cookie", action="append", default=[], help="with --api-url: sessionid=… per key"
    )
    args = parser.parse_args()
    args.users = args.users or (50 if args.quick else 1000)
    args.duration = args.duration or (15.0 if args.quick else 300.0)
    args.ramp_up = args.ramp_up if args.ramp_up is not None else (5.0 if args.quick else 60.0)
    args.agents = args.agents or min(args.users, 4 * (os.cpu_count() or 1))
    if args.api_url and not args.key:
        parser.error("--api-url needs at least one --key")
    if args.sse_share + args.ws_share > 1:
        parser.error("--sse-share and --ws-share add up to more than 1")
    _raise_file_limit()
    interrupt_on_signals()

    began = time.perf_counter()
    print(f"load average at the start {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="acl-") as tmp:
        if args.api_url:
            targets = _remote(args, Path(tmp))
        else:
            with scratch_database(args.database_url):
                if args.redis_url:
                    _flush_redis(args.redis_url)
                try:
                    targets = _local(args, Path(tmp))
                finally:
                    if args.redis_url:
                        _flush_redis(args.redis_url)
    print(f"load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print_summary(began, targets)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; everything it started is stopped")
