"""Latency the LLM gateway adds over calling Anthropic directly, its throughput, and whether its
streams lose chunks.

Starts the fake Anthropic (``tests.fakes.anthropic``) and the console as separate processes on
loopback, against a fresh database, in the configuration ``make run`` ships
(``harness.console_environment``: its gateway process and environment, multiprocess metrics,
its logging, its private broker), with one user (``--users``) whose quota keeps the default
rate, token and concurrency checks, with limits no run reaches, and one daily USD budget
(``harness.user_limits``): every call is admitted, reserved and settled against the budget as in
production, which is what is measured. ``--lean`` measures the stripped console the bench once
ran: no multiprocess metrics, no limits, no budget. One aiohttp client in this process times the
same requests sent to the fake directly and through the gateway, at 1, 16 and 64 concurrent
clients (closed loop); the latency added is the gateway's percentile minus the direct one.

* non-streaming: latency per call, and the gateway's throughput;
* streaming: time to first token (the first text delta) and the gap between text deltas, the
  fake pausing ``--chunk-delay-ms`` between deltas;
* 300 requests/s offered at an even pace (open loop, at most 64 in flight), for the latency
  added at that rate rather than at saturation: the target "300 requests/s with added p95
  ≤ 15 ms". (With 64 clients in a closed loop, 64 calls are always in flight, so by Little's law
  each waits 64 / throughput, ~200 ms at 300 calls/s, whatever the gateway adds; that p95 is
  shown, as the saturation figure it is.)
* 200 concurrent streams of a long echo, each delta checked against what the fake sends;
* the ledger afterwards: one usage row per call, no reservation left open;
* the CPU the server and the fake spent per call (from /proc), the figure that moves least when
  other work shares the machine (the load average is shown at the start and the end); its
  target, at most 1.5 ms of the gateway's CPU per non-streaming call at 64 clients, with the
  budget and multiprocess metrics on.

``--peer litellm`` measures instead the console's gateway beside LiteLLM's proxy (``peers``:
installed from PyPI into its own virtual environment under ``var/peers/``, one worker, no
database), both on the Anthropic Messages API (``POST /v1/messages``) in front of the same fake,
in alternating rounds (direct, console, peer; ``--rounds``, each run pooled over them) with the
same client and bodies, and prints each figure, both added parts and their ratio: the
non-streaming latency added (p50) at 1 client and the time to first token added (p50) at 1 and
16 clients, each at most 0.15 times the peer's; calls/s at 64 clients, at least 5 times the peer's;
and the gateway's CPU per call. A peer that cannot be installed or started ends the bench with
an error and no figures.

    python bench/gateway.py [--quick] [--server gateway|daphne|uvicorn] [--workers N] [--users N]
        [--lean] [--database-url postgres://…/agent_console_bench_gw]
        [--redis-url redis://127.0.0.1:6379/N] [--seconds S] [--chunk-delay-ms MS]
        [--peer litellm [--rounds N]]

The database is SQLite in a temporary folder, or the PostgreSQL database ``--database-url``
names, created (dropped first if it exists) and dropped at the end; with ``--redis-url`` that
Redis database (flushed before and after) is the cache, the channel layer and the broker, as
``REDIS_URL`` makes it for ``make run``. The server is, by default,
the gateway process as ``make run`` runs it for agents (uvicorn with uvloop and httptools,
``config.launch.gateway_command``); ``--server daphne`` measures the same route on the web
process, and ``--server uvicorn`` plain uvicorn, whose ``--workers N`` (0.54) leaves Nagle's
algorithm on (Kludex/uvicorn#3149): ~45 ms more per keep-alive request.

Ends with one line per target: ``TARGET <name> <value> <unit> <op> <target> PASS|FAIL``. The
lost-chunk count is, over all streams, the expected deltas missing or out of place plus any
extra ones; a stream that fails counts all its deltas lost.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import functools
import importlib.util
import itertools
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
    start_fake_anthropic,
    user_limits,
)
from peers import PEERS, PeerUnavailable, start_peer

MODEL = "claude-sonnet-5-5"
LEVELS = (1, 16, 64)
TIMING_STREAM_WORDS = 20  # a 22-delta echo per timed stream
LOST_STREAMS = 200
OPEN_LOOP_RATE = 300
CPU_PER_CALL_MS = 1.5  # the gateway's own CPU per non-streaming call, at 64 clients
PEER_LATENCY_RATIO = 0.15  # the console's added latency over the peer's, at most
PEER_RPS_RATIO = 5.0  # the console's calls/s over the peer's, at least
T = TypeVar("T")


# --- The database ------------------------------------------------------------------------------


def _setup(
    var_dir: Path, args: argparse.Namespace, upstream_url: str, upstream_key: str
) -> list[str]:
    """Migrate a fresh database and return one API key for each of ``args.users`` users, each
    with the shipped limits and daily budget (none with ``args.lean``)."""
    console_environment(
        var_dir,
        args.database_url,
        redis_url=args.redis_url,
        lean=args.lean,
        unset=("ANTHROPIC_API_KEY_FILE",),
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1",
        ANTHROPIC_API_KEY=upstream_key,
        ANTHROPIC_BASE_URL=upstream_url,
    )
    migrate()
    from console.models import User
    from console.services import api_key_create

    keys = []
    for n in range(args.users):
        user = User.objects.create_user(username=f"bench-gateway-{n}")
        user_limits(user.id, lean=args.lean)
        keys.append(api_key_create(user=user, name="bench")[1])
    close_database()
    return keys


def _ledger() -> tuple[int, int]:
    """Usage rows written and reservations still open."""
    from console.models import Reservation, UsageRecord

    counts = UsageRecord.objects.count(), Reservation.objects.count()
    close_database()
    return counts


# --- Child processes ---------------------------------------------------------------------------


def _start_fake(
    env: dict[str, str], log_dir: Path, key: str, chunk_delay: float
) -> tuple[Child, str]:
    argv = [sys.executable, "-m", "tests.fakes.anthropic", "--port", "0", "--api-key", key]
    return start_fake_anthropic([*argv, "--chunk-delay", str(chunk_delay)], env, log_dir)


# --- Load --------------------------------------------------------------------------------------


_HEADERS = {"content-type": "application/json", "anthropic-version": "2023-06-01"}


@dataclass
class _Path:
    name: str
    url: str
    keys: Iterator[str]  # one per user, taken in turn
    server: Child  # the process that answers
    calls: int = 0  # successful calls, warm-ups included

    def headers(self) -> dict[str, str]:
        return _HEADERS | {"x-api-key": next(self.keys)}


@dataclass
class _Stream:
    ttft_ms: float
    gaps_ms: list[float]
    texts: list[str]


def _body(prompt: str, *, stream: bool, max_tokens: int = 256) -> bytes:
    messages = [{"role": "user", "content": prompt}]
    body = {"model": MODEL, "max_tokens": max_tokens, "messages": messages, "stream": stream}
    return json.dumps(body).encode()


async def _call(session: aiohttp.ClientSession, path: _Path, body: bytes) -> float:
    started = time.perf_counter()
    async with session.post(path.url, data=body, headers=path.headers()) as response:
        data = await response.read()
        if response.status != 200:
            raise Failed(f"{path.name}: HTTP {response.status}: {data[:300]!r}")
    path.calls += 1
    return (time.perf_counter() - started) * 1000


async def _stream(session: aiohttp.ClientSession, path: _Path, body: bytes) -> _Stream:
    started = time.perf_counter()
    times: list[float] = []
    texts: list[str] = []
    event, ended = "", False
    async with session.post(path.url, data=body, headers=path.headers()) as response:
        if response.status != 200:
            raise Failed(f"{path.name}: HTTP {response.status}: {(await response.read())[:300]!r}")
        async for raw in response.content:
            now = time.perf_counter()
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "content_block_delta":
                delta = json.loads(line[5:])["delta"]
                if delta.get("type") == "text_delta":
                    times.append(now)
                    texts.append(delta["text"])
            elif line.startswith("data:") and event == "message_stop":
                ended = True
    if not ended or not times:
        raise Failed(f"{path.name}: the stream ended without message_stop")
    path.calls += 1
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    return _Stream((times[0] - started) * 1000, gaps, texts)


# --- Figures -----------------------------------------------------------------------------------


def _pcts(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 50), percentile(values, 95), percentile(values, 99)


def _fmt(p: tuple[float, float, float]) -> str:
    return f"p50 {p[0]:.2f} p95 {p[1]:.2f} p99 {p[2]:.2f} ms"


def _added(gateway: tuple[float, ...], direct: tuple[float, ...]) -> tuple[float, float, float]:
    return tuple(g - d for g, d in zip(gateway, direct, strict=True))  # type: ignore[return-value]


def _errors(name: str, run: Run[Any]) -> None:
    if run.errors:
        print(f"  {name}: {len(run.errors)} failed calls, e.g. {run.errors[0][:300]}")


def _expected_deltas(text: str) -> list[str]:
    """The deltas the fake streams ``text`` in: words, each with its trailing whitespace."""
    return re.findall(r"\S+\s*", text)


def _lost(expected: list[str], received: list[str]) -> int:
    matched = difflib.SequenceMatcher(None, expected, received, autojunk=False)
    in_order = sum(block.size for block in matched.get_matching_blocks())
    return (len(expected) - in_order) + (len(received) - in_order)


# --- The bench ---------------------------------------------------------------------------------


@dataclass
class _Bench:
    session: aiohttp.ClientSession
    direct: _Path
    gateway: _Path
    children: list[Child]
    seconds: float
    warmup: float
    open_seconds: float
    rounds: int = 1
    targets: list[str] = field(default_factory=list)

    def paths(self) -> Iterator[_Path]:
        yield self.direct
        yield self.gateway

    async def compare(
        self, clients: int, one: Callable[[_Path], Awaitable[T]]
    ) -> tuple[Run[T], Run[T]]:
        """Warm up and measure the direct path, then the gateway, with ``clients`` clients."""
        runs = []
        for path in self.paths():
            await closed_loop(functools.partial(one, path), clients, self.warmup, [])
            run = await closed_loop(
                functools.partial(one, path), clients, self.seconds, self.children
            )
            _errors(path.name, run)
            runs.append(run)
        return runs[0], runs[1]

    def cpu_per_call(self, run: Run[Any]) -> str:
        return ", ".join(f"{name} {ms:.2f}" for name, ms in run.cpu_ms_each().items())

    def target_cpu(self, run: Run[Any]) -> None:
        """The gateway server's CPU per call, from a run of non-streaming calls."""
        cpu = run.cpu_ms_each()[self.gateway.server.name]
        self.targets.append(
            report("gateway_cpu_per_call", cpu, "ms", "<=", CPU_PER_CALL_MS, digits=2)
        )

    async def non_streaming(self) -> None:
        body = _body("Say hello in a few words.", stream=False)
        print("\nnon-streaming (closed loop)")
        for clients in LEVELS:
            runs = await self.compare(clients, lambda path: _call(self.session, path, body))
            direct, gateway = (_pcts(run.results) for run in runs)
            added = _added(gateway, direct)
            direct_rps, rps = (run.rps for run in runs)
            print(
                f"  {clients:>2} clients: direct {_fmt(direct)} ({direct_rps:.0f} req/s); "
                f"gateway {_fmt(gateway)} ({rps:.0f} req/s)\n"
                f"             added {_fmt(added)}; CPU ms per gateway call: "
                f"{self.cpu_per_call(runs[1])}"
            )
            if clients == 1:
                self.targets.append(report("gateway_added_p50_1client", added[0], "ms", "<=", 3))
                self.targets.append(report("gateway_added_p99_1client", added[2], "ms", "<=", 10))
            if clients == 64:
                self.targets.append(report("gateway_rps_64clients", rps, "req/s", ">=", 300))
                self.target_cpu(runs[1])

    async def open_loop(self) -> None:
        body = _body("Say hello in a few words.", stream=False)
        runs = []
        for path in self.paths():
            one = functools.partial(_call, self.session, path, body)
            runs.append(await open_loop(one, OPEN_LOOP_RATE, self.open_seconds, max(LEVELS)))
            _errors(path.name, runs[-1])
        direct, gateway = (_pcts(run.results) for run in runs)
        added = _added(gateway, direct)
        achieved = runs[1].rps
        print(
            f"\nnon-streaming, {OPEN_LOOP_RATE} req/s offered (open loop, at most 64 in flight):"
            f"\n  direct {_fmt(direct)}; gateway {_fmt(gateway)} ({achieved:.0f} req/s done)"
            f"\n  added {_fmt(added)}"
        )
        if runs[1].errors:
            added = (float("inf"),) * 3  # a call refused at this rate is not a fast one
        self.targets.append(report("gateway_added_p95_300rps", added[1], "ms", "<=", 15))

    async def streaming(self) -> None:
        prompt = " ".join(f"word{n}" for n in range(TIMING_STREAM_WORDS))
        body = _body(prompt, stream=True)
        print("\nstreaming (closed loop): time to first token, gap between text deltas")
        for clients in LEVELS:
            runs = await self.compare(clients, lambda path: _stream(self.session, path, body))
            ttft = [_pcts([s.ttft_ms for s in run.results]) for run in runs]
            gaps = [_pcts([g for s in run.results for g in s.gaps_ms]) for run in runs]
            print(
                f"  {clients:>2} clients ({len(runs[1].results)} gateway streams): "
                f"TTFT direct {_fmt(ttft[0])}; gateway {_fmt(ttft[1])}\n"
                f"             TTFT added {_fmt(_added(ttft[1], ttft[0]))}\n"
                f"             gap direct {_fmt(gaps[0])}; gateway {_fmt(gaps[1])}\n"
                f"             gap added {_fmt(_added(gaps[1], gaps[0]))}; "
                f"CPU ms per gateway stream: {self.cpu_per_call(runs[1])}"
            )

    async def lost_chunks(self, words: int) -> None:
        prompts = [" ".join(f"s{n}w{w}" for w in range(words)) for n in range(LOST_STREAMS)]
        expected = [_expected_deltas(f"Echo: {prompt}") for prompt in prompts]
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                _stream(self.session, self.gateway, _body(p, stream=True, max_tokens=4 * words))
                for p in prompts
            ),
            return_exceptions=True,
        )
        seconds = time.perf_counter() - started
        lost, failed = 0, []
        for want, got in zip(expected, results, strict=True):
            if isinstance(got, BaseException):
                failed.append(got)
                lost += len(want)
            else:
                lost += _lost(want, got.texts)
        deltas = sum(len(want) for want in expected)
        print(
            f"\n{LOST_STREAMS} concurrent gateway streams of {deltas // LOST_STREAMS} deltas: "
            f"{seconds:.1f} s, {len(failed)} failed, {lost} deltas lost or out of place"
        )
        if failed:
            print(f"  e.g. {failed[0]!r}"[:400])
        self.targets.append(report("gateway_lost_chunks_200streams", lost, "chunks", "<=", 0))


@dataclass
class _Side:
    """The console's gateway and a peer, measured in alternating rounds against the same fake."""

    bench: _Bench
    peer: _Path

    async def rounds(
        self, clients: int, one: Callable[[_Path], Awaitable[T]]
    ) -> tuple[Run[T], Run[T], Run[T]]:
        """The direct path, the gateway and the peer in turn, ``rounds`` times, each warmed up
        and measured with ``clients`` clients; each path's rounds pooled into one run."""
        bench = self.bench
        pooled: tuple[Run[T], Run[T], Run[T]] = (Run(), Run(), Run())
        for _ in range(bench.rounds):
            for path, total in zip((bench.direct, bench.gateway, self.peer), pooled, strict=True):
                await closed_loop(functools.partial(one, path), clients, bench.warmup, [])
                run = await closed_loop(
                    functools.partial(one, path), clients, bench.seconds, [path.server]
                )
                _errors(path.name, run)
                total.results += run.results
                total.errors += run.errors
                total.seconds += run.seconds
                total.cpu[path.server.name] = (
                    total.cpu.get(path.server.name, 0) + run.cpu[path.server.name]
                )
        if not pooled[2].results:
            raise PeerUnavailable(f"{self.peer.name} answered no call: {pooled[2].errors[0]}")
        return pooled

    def line(
        self, what: str, direct: float, runs: tuple[Run[Any], ...], figures: list[float]
    ) -> None:
        """One figure of the gateway and the peer, their added part, and the ratio."""
        console, peer = figures
        cpu = [run.cpu_ms_each()[path.server.name] for run, path in self._paired(runs)]
        print(
            f"  {what}: direct {direct:.2f} ms; console added {console:.2f} ms, "
            f"{self.peer.name} added {peer:.2f} ms: ratio {console / peer:.3f}\n"
            f"      server CPU ms per call: console {cpu[0]:.2f}, {self.peer.name} {cpu[1]:.2f}"
        )

    def _paired(self, runs: tuple[Run[Any], ...]) -> list[tuple[Run[Any], _Path]]:
        return [(runs[1], self.bench.gateway), (runs[2], self.peer)]

    async def compare(self) -> None:
        bench = self.bench
        print(
            f"\nconsole gateway and {self.peer.name} side by side, {bench.rounds} alternating "
            f"rounds of {bench.seconds:g} s each (direct, console, {self.peer.name}); both on "
            "the Anthropic Messages API (POST /v1/messages), the same client and bodies"
        )
        body = _body("Say hello in a few words.", stream=False)
        runs = await self.rounds(1, lambda path: _call(bench.session, path, body))
        p50 = [percentile(run.results, 50) for run in runs]
        added = [p50[1] - p50[0], p50[2] - p50[0]]
        self.line("non-streaming, 1 client, p50", p50[0], runs, added)
        self.ratio("peer_ratio_added_p50_1client", added, "<=", PEER_LATENCY_RATIO)

        prompt = " ".join(f"word{n}" for n in range(TIMING_STREAM_WORDS))
        stream_body = _body(prompt, stream=True)
        for clients in (1, 16):
            streams = await self.rounds(
                clients, lambda path: _stream(bench.session, path, stream_body)
            )
            ttft = [percentile([s.ttft_ms for s in run.results], 50) for run in streams]
            added = [ttft[1] - ttft[0], ttft[2] - ttft[0]]
            who = f"{clients} client{'s' * (clients > 1)}"
            self.line(f"streaming, {who}, TTFT p50", ttft[0], streams, added)
            self.ratio(
                f"peer_ratio_ttft_added_p50_{who.replace(' ', '')}",
                added,
                "<=",
                PEER_LATENCY_RATIO,
            )

        runs = await self.rounds(64, lambda path: _call(bench.session, path, body))
        rps = [run.rps for run in runs]
        cpu = [run.cpu_ms_each()[path.server.name] for run, path in self._paired(runs)]
        print(
            f"  non-streaming, 64 clients: direct {rps[0]:.0f} calls/s; console {rps[1]:.0f}, "
            f"{self.peer.name} {rps[2]:.0f}: ratio {rps[1] / rps[2]:.2f}\n"
            f"      server CPU ms per call: console {cpu[0]:.2f}, {self.peer.name} {cpu[1]:.2f}"
        )
        self.ratio("peer_ratio_rps_64clients", [rps[1], rps[2]], ">=", PEER_RPS_RATIO)
        bench.target_cpu(runs[1])

    def ratio(self, name: str, figures: list[float], op: str, target: float) -> None:
        value = figures[0] / figures[1] if figures[1] > 0 else float("inf")
        self.bench.targets.append(report(name, value, "x", op, target, digits=3))


async def _measure(
    args: argparse.Namespace,
    children: list[Child],
    direct_url: str,
    console_url: str,
    upstream_key: str,
    console_keys: list[str],
    peer: tuple[Child, str, str] | None,
) -> tuple[list[str], int]:
    fake, console = children[0], children[1]
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        bench = _Bench(
            session,
            _Path("direct", f"{direct_url}/v1/messages", itertools.repeat(upstream_key), fake),
            _Path(
                "gateway",
                f"{console_url}/gateway/v1/messages",
                itertools.cycle(console_keys),
                console,
            ),
            children,
            args.seconds,
            args.warmup,
            args.open_seconds,
            args.rounds,
        )
        if peer is not None:
            child, url, key = peer
            await _Side(bench, _Path(child.name, url, itertools.repeat(key), child)).compare()
        else:
            await bench.non_streaming()
            await bench.open_loop()
            await bench.streaming()
            await bench.lost_chunks(args.lost_words)
    return bench.targets, bench.gateway.calls


def _server_label(args: argparse.Namespace) -> str:
    label = {"gateway": "the gateway process (uvicorn, uvloop, httptools)"}.get(
        args.server, args.server
    )
    label += (
        ", lean (no multiprocess metrics, no limits or budget)"
        if args.lean
        else ", as shipped (multiprocess metrics, the default quota's checks, a daily USD budget)"
    )
    if args.server == "uvicorn":
        # uvicorn takes uvloop and httptools when they are installed, asyncio and h11 otherwise.
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        label += f" ({args.workers} workers, {http}, {loop})"
    return label + (f", {args.users} users" if args.users > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--server", choices=("gateway", "daphne", "uvicorn"), default="gateway")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--users", type=int, default=1, help="spread calls over N users' keys")
    add_console_arguments(parser)
    parser.add_argument(
        "--peer", choices=PEERS, help="measure this other gateway beside the console's instead"
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds with --peer (default 3)")
    parser.add_argument("--seconds", type=float, help="per measured run (default 8; quick 1.5)")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=10.0, help="the fake's pause between deltas"
    )
    args = parser.parse_args()
    if args.workers != 1 and args.server != "uvicorn":
        parser.error("--workers needs --server uvicorn (daphne runs one process)")
    # The side-by-side run measures four figures on three paths, in rounds.
    args.seconds = args.seconds or ((1.0 if args.peer else 1.5) if args.quick else 8.0)
    args.warmup = (0.2 if args.peer else 0.3) if args.quick else 1.0
    args.open_seconds = 2.0 if args.quick else args.seconds
    args.lost_words = 40 if args.quick else 300
    args.rounds = args.rounds or (2 if args.quick else 3)
    interrupt_on_signals()

    began = time.perf_counter()
    children: list[Child] = []
    targets: list[str] = []
    with (
        scratch_database(args.database_url),
        scratch_redis(args.redis_url),
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp,
    ):
        try:
            var_dir = Path(tmp)
            upstream_key = f"sk-ant-bench-{secrets.token_hex(8)}"
            env = dict(os.environ)
            fake, fake_url = _start_fake(env, var_dir, upstream_key, args.chunk_delay_ms / 1000)
            children.append(fake)
            console_keys = _setup(var_dir, args, fake_url, upstream_key)
            if queue := start_broker(var_dir):
                children.append(queue)
            console, console_url = start_console(
                dict(os.environ), var_dir, args.server, args.workers
            )
            children.append(console)
            peer = None
            if args.peer:
                peer = start_peer(args.peer, var_dir, MODEL, fake_url, upstream_key)
                children.append(peer[0])
            from django.db import connection

            print(
                f"gateway on {_server_label(args)}, database {connection.vendor}, "
                f"{'Redis' if args.redis_url else 'no Redis'}, {os.cpu_count()} CPUs "
                f"(load average {os.getloadavg()[0]:.1f}); fake Anthropic pauses "
                f"{args.chunk_delay_ms:g} ms between deltas; {args.seconds:g} s per run",
                flush=True,
            )
            targets, calls = asyncio.run(
                _measure(
                    args, [fake, console], fake_url, console_url, upstream_key, console_keys, peer
                )
            )
            time.sleep(0.5)  # the last streams settle just after their last byte
            records, open_reservations = _ledger()
            print(
                f"\nledger: {records} usage rows for {calls} gateway calls, "
                f"{open_reservations} reservations open"
            )
            for child in children:
                child.check_alive()  # a crash under load would void the figures
            if error := console.first_error():
                print(f"\nthe console logged errors; the first ends:\n{error}")
        finally:
            for child in reversed(children):
                child.stop()
    print_summary(began, targets)


if __name__ == "__main__":
    try:
        main()
    except PeerUnavailable as exc:
        sys.exit(f"no figures for the peer: {exc}")
    except KeyboardInterrupt:
        sys.exit("interrupted; the fake Anthropic and the console are stopped")
