"""What a second process and a second machine add: spawns per second over one and two sandbox
hosts, chat turns per second through nginx with one and two web processes, and gateway calls
per second with one and two gateway processes, with the CPU each costs.

Builds the fleet of ``tests/multihost/fleet.py`` on network namespaces (root only): host
``front`` runs nginx (TLS) in front of two daphne web processes and two gateway processes, and
beat; hosts ``sb1`` and ``sb2`` each run a Celery worker, its relay and the agents' process
sandboxes. Every process runs with ``make run``'s settings, except that each sandbox host
announces 64 vCPUs (both share this machine's CPUs, and the default, 4 per CPU, would hold 8
agents). The fake Anthropic answers in a process of its own. The database is the PostgreSQL one
``--database-url`` names, created (dropped first if it exists) and dropped at the end; Redis is
``--redis-url``'s. One user, whose API key and quota have no rate or concurrency limit and no
budget, as in the other benches, drives everything through nginx from this process:

* spawns: N agents asked for at once (``POST /api/v1/agents``), timed from the first request
  until all run; on both hosts (and how they split), then with ``sb2`` draining (one host);
* chat turns: ``POST /agents/<id>/v1/agent/chat`` as JSON, a closed loop of clients, the turns
  spread over as many agents as clients, half on each host (each turn also makes one gateway
  call, from the sandbox through nginx); nginx sends the web routes to one web process, then
  to both;
* gateway: ``POST /gateway/v1/messages`` with the user's key (as ``bench/gateway.py`` calls it),
  a closed loop; nginx sends the gateway's route to one gateway process, then to both.

Between the one- and two-process runs nginx is reloaded with a re-rendered upstream list; the
other process keeps running, idle. The runs alternate (one, two, one, two: ``--rounds``) so that
other work on the machine weighs on both alike. Rates on a machine whose few cores also carry
nginx, the sandboxes, the fake and this load generator do not carry to another machine; the CPU
each tier spent per turn or call (from /proc: the processes by name, each sandbox host's
namespace and what its processes started) does, roughly, and README.md's sizing starts from it.
Each run also shows the CPU of the forwarder that carries the hosts' PostgreSQL and Redis
traffic, and what the machine's other work spent meanwhile.

    python bench/multihost.py --database-url postgres://…/agent_console_bench_multihost
        [--redis-url redis://127.0.0.1:6379/9] [--quick] [--spawns N] [--seconds S]
        [--rounds N] [--clients N]

``--quick`` takes about a minute, a third of it building the fleet. Ends with the CPU figures
and an idle agent's memory on ``INFO`` lines, then one line per target: ``TARGET <name> <value>
<unit> <op> <target> PASS|FAIL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from harness import (
    Failed,
    Run,
    close_database,
    closed_loop,
    console_environment,
    cpu_seconds,
    database_url,
    interrupt_on_signals,
    migrate,
    print_summary,
    report,
    scratch_database,
    user_limits,
)

if TYPE_CHECKING:
    from tests.multihost.fleet import Fleet

MODEL = "claude-sonnet-5-5"
SANDBOX_HOST_VCPUS = 64
# What the design asks, not what was measured here (README.md, "Across machines"):
SPAWNS_PER_SECOND = 1.7  # the seed's 100 agents booted within a minute
SPAWN_HOSTS_RATIO = 1.5  # a second sandbox host adds at least half again
SECOND_PROCESS_RATIO = 1.2  # a second web (gateway) process adds at least a fifth


# --- The database ------------------------------------------------------------------------------


def _setup(var_dir: Path, url: str, redis_url: str) -> None:
    """Django, set up in this process, on a freshly migrated ``url``."""
    console_environment(
        var_dir,
        url,
        unset=("PROMETHEUS_MULTIPROC_DIR", "ANTHROPIC_API_KEY_FILE", "CELERY_TASK_ALWAYS_EAGER"),
        REDIS_URL=redis_url,
    )
    migrate()


def _limits(username: str) -> None:
    """``username``'s limits as the benches ship them (``harness.user_limits``: the default
    quota's checks with limits no bench reaches, and a daily USD budget), with room for every
    agent the bench spawns."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username=username)
    user_limits(
        user.pk,
        lean=False,
        max_agents=10_000,
        max_total_vcpus=10_000,
        max_total_memory_mib=2**31 - 1,
        max_concurrent_sessions=10_000,
    )


def _drain(name: str, draining: bool) -> None:
    from agents.models import SandboxHost

    SandboxHost.objects.filter(name=name).update(is_draining=draining)


def _statuses(ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Each agent's status and host, by id, in one query."""
    from agents.models import Agent

    rows = Agent.objects.filter(pk__in=ids).values_list("pk", "status", "host__name")
    return {str(pk): (status, host) for pk, status, host in rows}


# --- CPU ---------------------------------------------------------------------------------------


def _host_pids(namespace: str) -> set[int]:
    """Every process of a sandbox host: those in its network namespace (its worker, relay and
    sandbox supervisors) and their descendants (the sandboxed programs, in namespaces of their
    own)."""
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return _with_descendants(int(pid) for pid in listed.stdout.split())


def _with_descendants(pids: Iterable[int]) -> set[int]:
    found: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def _host_cpu(namespace: str) -> float:
    """CPU seconds of a sandbox host's processes."""
    return sum(cpu_seconds(pid, descendants=False) for pid in _host_pids(namespace))


def _cpu(fleet: Fleet) -> dict[str, float]:
    """CPU seconds so far, by tier: web, gateway, nginx, the fake, each sandbox host, and this
    process (the load generator)."""
    tiers: dict[str, float] = {}
    for name, proc in fleet.processes.items():
        tier = name.partition("-")[0]  # web-8001 -> web; fake-anthropic -> fake
        if tier in {"web", "gateway", "nginx", "fake"}:
            tiers[tier] = tiers.get(tier, 0.0) + cpu_seconds(proc.pid)
    for name in fleet.sandbox_hosts:
        tiers[name] = _host_cpu(fleet.net.hosts[name].namespace)
    # The hop to PostgreSQL and Redis on this machine, which a real network does not cost.
    tiers["forward"] = sum(cpu_seconds(proc.pid) for proc in fleet.net.forwarders)
    tiers["client"] = sum(os.times()[:2])
    tiers["machine"] = _machine_busy()
    return tiers


def _machine_busy() -> float:
    """CPU seconds every process on the machine has spent (``/proc/stat``), ours and others'."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _sandbox_pss_mib(namespace: str) -> tuple[float, int]:
    """Proportional set size of a sandbox host's sandboxes (each supervisor and what it runs),
    in MiB, and how many there are."""
    pids = _host_pids(namespace)
    supervisors = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"vmdriver.supervisor" in Path(f"/proc/{pid}/cmdline").read_bytes():
                supervisors.append(pid)
    total = 0
    for pid in _with_descendants(supervisors):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024, len(supervisors)


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def _per(cpu: dict[str, float], count: int) -> str:
    """CPU milliseconds per turn (call, spawn) by tier, then what the machine's other work
    (other programs than the fleet and this bench) spent meanwhile."""
    each = [
        f"{name} {s / max(1, count) * 1000:.1f}" for name, s in cpu.items() if name != "machine"
    ]
    return ", ".join(each) + f"; other work {_others(cpu) / max(1, count) * 1000:.0f}"


def _others(cpu: dict[str, float]) -> float:
    return max(0.0, cpu["machine"] - sum(s for name, s in cpu.items() if name != "machine"))


# --- Requests ----------------------------------------------------------------------------------


@dataclass
class _Bench:
    fleet: Fleet
    seconds: float
    warmup: float
    rounds: int
    clients: int
    targets: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    cpu_each: dict[str, dict[str, float]] = field(default_factory=dict)

    def session(self) -> aiohttp.ClientSession:
        """A session of fresh connections (after a reload, none to nginx's old worker)."""
        connector = aiohttp.TCPConnector(limit=0, ssl=self.fleet.ca)
        headers = {"Authorization": f"Bearer {self.fleet.key}"}
        timeout = aiohttp.ClientTimeout(total=120)
        return aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout)

    async def spawn_many(self, count: int, label: str) -> tuple[float, dict[str, int]]:
        """``count`` agents asked for at once: seconds until all run, and how many run on each
        host (``Fleet.agents`` records them)."""
        started = time.perf_counter()
        async with self.session() as session:

            async def one(n: int) -> str:
                body = {"name": f"{label}-{n}", "memory": 256}
                async with session.post(f"{self.fleet.url}/api/v1/agents", json=body) as answer:
                    data = await answer.read()
                    if answer.status != 201:
                        raise Failed(f"spawn: HTTP {answer.status}: {data[:300]!r}")
                return str(json.loads(data)["agent_id"])

            ids = await asyncio.gather(*(one(n) for n in range(count)))
        while True:
            states = await asyncio.to_thread(_statuses, ids)
            if all(status in {"running", "failed"} for status, _ in states.values()):
                break
            if time.perf_counter() - started > 180:
                raise Failed(f"spawn: not all running after 180 s: {states}")
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        failed = [status for status, _ in states.values() if status != "running"]
        if failed:
            raise Failed(f"spawn: {len(failed)} of {count} boots failed")
        hosts: dict[str, int] = {}
        for agent_id, (_, host) in states.items():
            hosts[host] = hosts.get(host, 0) + 1
            self.fleet.agents.setdefault(host, []).append(agent_id)
        return seconds, hosts

    async def spawns(self, count: int) -> None:
        print(f"\nspawns: {count} agents asked for at once, until all run", flush=True)
        await self.spawn_many(2, "warm-up")  # the workers' first boots import what boots need
        rates = {}
        # Two hosts first: placement picks the host with the most room, so they start even.
        for hosts, label in ((2, "two-hosts"), (1, "one-host")):
            await asyncio.to_thread(_drain, "sb2", hosts == 1)
            before = _cpu(self.fleet)
            seconds, split = await self.spawn_many(count, label)
            cpu = _spent(before, _cpu(self.fleet))
            rates[hosts] = count / seconds
            where = ", ".join(f"{n} on {host}" for host, n in sorted(split.items()))
            print(
                f"  {hosts} sandbox host{'s' if hosts > 1 else ''}: {seconds:.2f} s, "
                f"{rates[hosts]:.2f} spawns/s ({where})\n"
                f"     CPU ms per spawn: {_per(cpu, count)}",
                flush=True,
            )
            if hosts == 2:
                self.cpu_each["spawn"] = {k: v / count for k, v in cpu.items()}
        await asyncio.to_thread(_drain, "sb2", False)
        ratio = rates[2] / rates[1]
        print(f"  two hosts over one: {ratio:.2f}")
        self.targets.append(
            report(
                "multihost_spawns_per_s_two_hosts", rates[2], "spawns/s", ">=", SPAWNS_PER_SECOND
            )
        )
        self.targets.append(
            report("multihost_spawns_two_hosts_over_one", ratio, "x", ">=", SPAWN_HOSTS_RATIO)
        )

    async def compare(
        self,
        kind: str,
        title: str,
        routes: dict[int, tuple[Sequence[int], Sequence[int]]],
        one: Callable[[aiohttp.ClientSession], Awaitable[Any]],
    ) -> dict[int, float]:
        """Turns (calls) per second with each of ``routes`` (processes -> web and gateway
        ports), alternating ``rounds`` times; the CPU each tier spent per turn."""
        print(f"\n{title} ({self.clients} clients, closed loop)", flush=True)
        done: dict[int, int] = {}
        took: dict[int, float] = {}
        cpu: dict[int, dict[str, float]] = {}
        errors: list[str] = []
        for _, (processes, (web, gateway)) in itertools.product(range(self.rounds), routes.items()):
            self.fleet.route(web_ports=web, gateway_ports=gateway)
            async with self.session() as session:
                await closed_loop(lambda s=session: one(s), self.clients, self.warmup, [])
                before = _cpu(self.fleet)
                run: Run[Any] = await closed_loop(
                    lambda s=session: one(s), self.clients, self.seconds, []
                )
                spent = _spent(before, _cpu(self.fleet))
            errors += run.errors
            done[processes] = done.get(processes, 0) + len(run.results)
            took[processes] = took.get(processes, 0.0) + run.seconds
            cpu[processes] = {k: cpu.get(processes, {}).get(k, 0.0) + v for k, v in spent.items()}
            print(f"  {processes} process(es): {run.rps:.1f}/s", flush=True)
        rates = {}
        for processes in routes:
            rates[processes] = done[processes] / took[processes]
            print(
                f"  {processes} process(es), {self.rounds} run(s): {rates[processes]:.1f}/s; "
                f"CPU ms each: {_per(cpu[processes], done[processes])}"
            )
        every = sum(done.values())
        self.cpu_each[kind] = {
            k: sum(c[k] for c in cpu.values()) / max(1, every) for k in cpu[next(iter(cpu))]
        }
        if errors:
            print(f"  {len(errors)} failed, e.g. {errors[0][:300]}")
        return rates

    async def chat(self) -> None:
        # As many agents as clients, taken from each host in turn.
        agents = [a for pair in zip(*self.fleet.agents.values(), strict=False) for a in pair]
        agents = agents[: self.clients]
        turns = itertools.count()
        assigned = itertools.cycle(agents)
        web, gateway = self.fleet.web_ports, self.fleet.gateway_ports

        async def turn(session: aiohttp.ClientSession) -> None:
            n = next(turns)
            url = f"{self.fleet.url}/agents/{next(assigned)}/v1/agent/chat"
            async with session.post(url, json={"prompt": f"turn {n}"}) as answer:
                data = await answer.read()
                if answer.status != 200 or json.loads(data)["content"] != f"Echo: turn {n}":
                    raise Failed(f"chat: HTTP {answer.status}: {data[:300]!r}")

        rates = await self.compare(
            "chat",
            "chat turns (JSON, one gateway call each)",
            {1: (web[:1], gateway), 2: (web, gateway)},
            turn,
        )
        ratio = rates[2] / rates[1]
        print(f"  two web processes over one: {ratio:.2f}")
        self.targets.append(
            report("multihost_chat_two_web_over_one", ratio, "x", ">=", SECOND_PROCESS_RATIO)
        )

    async def gateway(self) -> None:
        messages = [{"role": "user", "content": "Say hello in a few words."}]
        body = json.dumps({"model": MODEL, "max_tokens": 64, "messages": messages}).encode()
        headers = {
            "content-type": "application/json",
            "anthropic-version": "2023-06-01",
            "x-api-key": self.fleet.key,
        }
        url = f"{self.fleet.url}/gateway/v1/messages"
        web, gateway = self.fleet.web_ports, self.fleet.gateway_ports

        async def call(session: aiohttp.ClientSession) -> None:
            async with session.post(url, data=body, headers=headers) as answer:
                data = await answer.read()
                if answer.status != 200:
                    raise Failed(f"gateway: HTTP {answer.status}: {data[:300]!r}")

        rates = await self.compare(
            "gateway", "gateway calls", {1: (web, gateway[:1]), 2: (web, gateway)}, call
        )
        ratio = rates[2] / rates[1]
        print(f"  two gateway processes over one: {ratio:.2f}")
        self.targets.append(
            report("multihost_gateway_two_over_one", ratio, "x", ">=", SECOND_PROCESS_RATIO)
        )

    def per_cpu(self) -> None:
        """The figures that carry to another machine: CPU milliseconds per spawn, turn and
        call, by tier (README.md sizes the seed's fleet from them)."""
        spawn, chat, call = self.cpu_each["spawn"], self.cpu_each["chat"], self.cpu_each["gateway"]
        hosts = sum(spawn[name] for name in self.fleet.sandbox_hosts)
        turn_hosts = sum(chat[name] for name in self.fleet.sandbox_hosts)
        console = chat["web"] + chat["gateway"] + chat["nginx"]
        figures = [
            ("spawn_sandbox_host_cpu", hosts, "ms"),
            ("spawn_web_cpu", spawn["web"], "ms"),
            ("turn_web_cpu", chat["web"], "ms"),
            ("turn_gateway_cpu", chat["gateway"], "ms"),
            ("turn_nginx_cpu", chat["nginx"], "ms"),
            ("turn_sandbox_hosts_cpu", turn_hosts, "ms"),
            ("turn_front_cpu", console, "ms"),
            ("gateway_call_cpu", call["gateway"], "ms"),
            ("gateway_call_nginx_cpu", call["nginx"], "ms"),
        ]
        pss, count = 0.0, 0
        for name in self.fleet.sandbox_hosts:
            host_pss, host_count = _sandbox_pss_mib(self.fleet.net.hosts[name].namespace)
            pss, count = pss + host_pss, count + host_count
        figures.append(("idle_agent_pss", pss / max(1, count) / 1000, "MiB"))
        for name, value, unit in figures:
            self.info.append(f"INFO multihost_{name} {value * 1000:.1f} {unit}")


async def _measure(args: argparse.Namespace, fleet: Fleet) -> _Bench:
    bench = _Bench(fleet, args.seconds, args.warmup, args.rounds, args.clients)
    await bench.spawns(args.spawns)
    await bench.chat()
    await bench.gateway()
    bench.per_cpu()
    return bench


def _problem() -> str | None:
    from tests.multihost.network import netns_problem

    if problem := netns_problem():
        return f"this bench runs its hosts in network namespaces: {problem}"
    if not (shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")):
        return "nginx is not installed (scripts/system-packages.sh nginx installs it)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument(
        "--database-url",
        type=database_url,
        required=True,
        help="a PostgreSQL database to create, use and drop",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL"), help="Redis (default: $REDIS_URL)"
    )
    parser.add_argument("--spawns", type=int, help="agents per spawn run (default 20; quick 6)")
    parser.add_argument("--seconds", type=float, help="per measured run (default 8; quick 3)")
    parser.add_argument("--rounds", type=int, help="runs of each (default 2; quick 1)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    args = parser.parse_args()
    if not args.redis_url:
        parser.error("--redis-url (or REDIS_URL) is needed: the fleet's broker is Redis")
    if problem := _problem():
        sys.exit(problem)
    args.spawns = args.spawns or (6 if args.quick else 20)
    args.seconds = args.seconds or (3.0 if args.quick else 8.0)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.warmup = 0.5 if args.quick else 1.0
    interrupt_on_signals()

    began = time.perf_counter()
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    assert nginx is not None
    lines: list[str] = []
    load = os.getloadavg()[0]
    with (
        scratch_database(args.database_url),
        tempfile.TemporaryDirectory(prefix="bench-multihost-") as tmp,
    ):
        try:
            _setup(Path(tmp), args.database_url, args.redis_url)
            logging.getLogger("httpx").setLevel(logging.WARNING)  # the fleet's readiness polls
            # Imported once Django is set up: the fleet reads the database through it.
            from tests.multihost.fleet import running_fleet

            with running_fleet(
                logs=Path(tmp) / "fleet",
                nginx=nginx,
                database_url=args.database_url,
                redis_url=args.redis_url,
                username="bench",
                settings={"SANDBOX_HOST_VCPUS": str(SANDBOX_HOST_VCPUS)},
                fake_in_process=False,
            ) as fleet:
                _limits("bench")
                print(
                    f"fleet built in {time.perf_counter() - began:.0f} s: nginx, 2 web, "
                    f"2 gateway processes on front; {', '.join(fleet.sandbox_hosts)}; "
                    f"{os.cpu_count()} CPUs (load average {load:.1f} at the start)",
                    flush=True,
                )
                bench = asyncio.run(_measure(args, fleet))
                lines = bench.info + bench.targets
                for name, proc in fleet.processes.items():  # a crash would void the figures
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited:\n{fleet.log(name)[-2000:]}")
        finally:
            close_database()
    print_summary(began, lines)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; the fleet and its database are gone")
