"""The chat WebSocket under load: thousands of idle sockets on one daphne process, and hundreds
of replies streamed together.

Starts, on loopback, against a fresh database, in the configuration ``make run`` ships: the fake
Anthropic (``tests.fakes.anthropic``, pausing ``--chunk-delay-ms`` between text deltas), the
gateway process as ``make run`` runs it (uvicorn, uvloop, httptools), one web process as
``make run`` runs it (daphne on uvloop, ``config.web``), metrics written to a
``PROMETHEUS_MULTIPROC_DIR`` by every process, logging at its default level and format, and
``--agents`` agents (10) booted through the console's own spawn path on the ``process`` backend
(real ``python -m agents.runtime`` processes in their sandboxes, reaching the gateway through
their sandbox's relay). No Celery worker runs: the boots run inline in this process, and a chat
turn needs none. Each agent belongs to its own user, with the default quota (50 gateway calls
in flight, 100 a minute: at most 50 streams per agent) and a daily USD budget; the
``--sockets`` chats are spread over them, one session each.

* Idle: this process (asyncio, aiohttp's client) opens ``--sockets`` sockets (5,000; ``--quick``
  1,000), each authenticated with its user's session cookie and doing what the chat page does
  on load: wait for ``ready``, send ``open`` for its session, read the ``session`` snapshot. The
  daphne process's resident memory (RSS) before and after, divided by the sockets, is the
  memory per idle connection. The sockets then stay idle for a while, and every one must still
  answer a WebSocket ping.
* Steady streaming: ``--cpu-chats`` of them (50) send a long prompt (``--cpu-words``: 60, quick
  40) at once. The web process's CPU is read (from ``/proc``) between the moment every reply has
  begun and the moment the first one ends, when nothing but chunks flows, and divided by the chunks
  delivered meanwhile: what a streamed chunk costs it. A turn's start and end cost it as much as
  50-70 chunks, and vary with the machine's load, so they are kept out of this figure; the
  streaming round below shows the all-told figure too.
* Streaming: ``--streams`` of them (500; ``--quick`` 100) send a prompt, one after another,
  evenly over ``--spread-ms`` (5,000; 0 sends them all at once). The fake answers each with
  ``Echo: <prompt>``, one delta per word (``--words`` words), and each delta must reach its
  socket exactly once, in order, between ``turn_started`` and ``done``, and ``done`` must carry
  the whole reply as recorded. Sent at once, the replies' deltas come in waves, every reply's
  at the same moment: the last chunk of a wave waits for the whole wave, and the 500 turns'
  starts (a few ms of CPU each) queue behind one another, a burst that no single process meets
  within 100 ms. Real prompts arrive over time: the target is for 500 sent over 5 s.

How the added latency of a chunk is measured: the fake runs in a process of its own (so that
neither this client's work nor its GIL delays it), and it notes the moment it writes each text
delta to the gateway, with ``time.monotonic()``; this process notes, with the same clock (Linux's
``CLOCK_MONOTONIC`` is one clock for every process), the moment the chunk's frame is read off
its socket. The difference is everything the console adds between Anthropic and the browser:
the gateway, the agent's relay and runtime, the web process's turn, replay log, channel layer
and socket, and this client's own reading (which only makes the figure larger). Which chunk is
which: every prompt starts with a word naming its chat, and the fake, which sees the prompt,
labels each delta it writes with it. The fake has no hook for this, so its child process here
wraps the function that frames each SSE event (``tests.fakes.anthropic._sse``), which is called
right before the write.

The figures are those of a machine shared by everything started here (fake, gateway, relays,
runtimes, daphne, this client): the load average is shown at the start and the end, and the
CPU each part spent. Targets: 5,000 idle connections at <= 100 KiB of server memory each; the
web process's CPU per streamed chunk <= 0.15 ms; 500 chats whose prompts arrive over 5 s
streaming with added chunk latency p99 <= 100 ms; no lost chunk.

    python bench/ws.py [--quick] [--sockets N] [--streams M] [--agents A] [--words W]
        [--chunk-delay-ms MS] [--spread-ms MS] [--idle-seconds S] [--cpu-chats C]
        [--cpu-words W] [--database-url postgres://…/agent_console_bench_ws]
        [--redis-url redis://127.0.0.1:6379/N] [--latencies-csv PATH]

The database is SQLite in a temporary folder, or the PostgreSQL database ``--database-url``
names, created (dropped first if it exists) and dropped at the end. Without ``--redis-url`` the
channel layer and the replay log are the web process's memory, as ``make run`` has them; with
it, Redis's (that database is flushed before and after), as several web processes need.
Everything started here (fake, gateway, daphne, the agents' sandboxes) is stopped however the
run ends, Ctrl-C too.

Ends with one line per target: ``TARGET <name> <value> <unit> <op> <target> PASS|FAIL``. The
lost-chunk count is, over all streamed replies, the deltas the fake wrote that did not arrive in
their place (missing, repeated or out of order), plus any that arrived without being written,
plus one for each reply that did not begin with ``turn_started``, did not end with a ``done``
recording the whole reply, or whose ``seq`` numbers skip or repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import difflib
import json
import logging
import math
import os
import resource
import secrets
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    CLIENT_ERRORS,
    Child,
    Failed,
    close_database,
    console_environment,
    cpu_seconds,
    database_url,
    free_port,
    interrupt_on_signals,
    migrate,
    percentile,
    print_summary,
    report,
    scratch_database,
    start_console,
    start_fake_anthropic,
    wait_ready,
)

CONNECTS_IN_FLIGHT = 50  # daphne listens with Twisted's default backlog of 50
ENDINGS = {"done", "error", "cancelled"}
KEEP_ALIVE_PAUSE = 6.0  # seconds between the rounds
DEFAULT_CONCURRENT_REQUESTS = 50  # console.models.Quota's default: a user's calls in flight


# --- The fake Anthropic, noting when it writes each delta -------------------------------------


def _serve_fake(record: Path, chunk_delay: float, api_key: str) -> None:
    """The child process: a ``FakeAnthropic`` that appends ``<monotonic> <chat> <json text>``
    to ``record`` for each text delta, as it writes it; serves until SIGTERM."""
    from tests.fakes import anthropic as fakes

    chat: contextvars.ContextVar[str] = contextvars.ContextVar("chat", default="?")
    out = record.open("w", buffering=1 << 16)
    plain_sse = fakes._sse

    def stamped_sse(event: str, data: dict[str, Any]) -> bytes:
        if event == "content_block_delta" and data["delta"].get("type") == "text_delta":
            text = json.dumps(data["delta"]["text"])
            out.write(f"{time.monotonic():.6f} {chat.get()} {text}\n")
        return plain_sse(event, data)

    fakes._sse = stamped_sse

    class StampingFake(fakes.FakeAnthropic):
        async def _messages(self, request: Any, body: dict[str, Any]) -> Any:
            last = body["messages"][-1].get("content")
            if isinstance(last, list):  # blocks, the last marked for the cache
                last = "".join(b.get("text", "") for b in last if b.get("type") == "text")
            chat.set(last.split(" ", 1)[0] if isinstance(last, str) and last else "?")
            return await super()._messages(request, body)

    try:
        fakes.serve_until_signalled(StampingFake(chunk_delay=chunk_delay, required_api_key=api_key))
    finally:
        out.close()


def _start_fake(
    env: dict[str, str], log_dir: Path, key: str, chunk_delay: float, record: Path
) -> tuple[Child, str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-fake", str(record)]
    argv += ["--chunk-delay-ms", str(chunk_delay * 1000), "--fake-key", key]
    return start_fake_anthropic(argv, env, log_dir)


def _emitted(record: Path) -> dict[str, list[tuple[float, str]]]:
    """Each chat's deltas as the fake wrote them: (when, text), in order."""
    found: dict[str, list[tuple[float, str]]] = {}
    for line in record.read_text().splitlines():
        when, chat, text = line.split(" ", 2)
        found.setdefault(chat, []).append((float(when), json.loads(text)))
    return found


# --- The database ------------------------------------------------------------------------------


def _environment(var_dir: Path, database_url: str | None, redis_url: str | None) -> None:
    """The console's environment, in this process and so in the servers'."""
    console_environment(
        var_dir,
        database_url,
        unset=(
            "CELERY_TASK_ALWAYS_EAGER",
            "LOG_LEVEL",
            "LOG_FORMAT",
            "ANTHROPIC_API_KEY_FILE",
            "GATEWAY_URL",
        ),
        SANDBOX_STATE_DIR=str(var_dir / "sandboxes"),
        SANDBOX_BACKEND="process",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1",
        ANTHROPIC_MAX_RETRIES="0",
        # No worker heartbeats the host registered below, and no beat reaps idle agents.
        SANDBOX_HOST_STALE_SECONDS="86400",
        # As make run has it (config.launch): every process writes its metrics to files here.
        PROMETHEUS_MULTIPROC_DIR=str(var_dir / "prometheus"),
    )
    (var_dir / "prometheus").mkdir(exist_ok=True)
    # Without --redis-url, make run's defaults: the in-memory channel layer and replay log.
    if redis_url:
        os.environ["REDIS_URL"] = redis_url


def _flush_redis(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()


@dataclass(frozen=True)
class _Chat:
    """One socket's chat: whose cookie, which session."""

    user: int
    cookie: str
    session_id: str


def _setup(users: int, sockets: int) -> list[_Chat]:
    """Migrate a fresh database; ``users`` users with the default quota and a daily USD budget,
    each with a session cookie, and ``sockets`` chats spread over them (their agents come
    later)."""
    # Boots run inline in this process, as a worker would run them, and quietly.
    os.environ |= {"CELERY_TASK_ALWAYS_EAGER": "true", "LOG_LEVEL": "WARNING"}
    migrate()
    logging.getLogger("kombu").setLevel(logging.ERROR)  # no broker is used
    from django.test import Client

    from agents.services import host_register
    from console.models import Budget, User
    from console.services import quota_get

    host_register(
        name="bench-ws", backend="process", capacity_vcpus=10_000, capacity_memory_mib=10_000_000
    )
    cookies = []
    for n in range(users):
        user = User.objects.create_user(username=f"bench-ws-{n}")
        quota_get(user=user)
        Budget.objects.create(
            user=user, metric=Budget.Metric.USD, window=Budget.Window.DAY, limit=Decimal(1000)
        )
        browser = Client()
        browser.force_login(user)
        cookies.append(f"sessionid={browser.cookies['sessionid'].value}")
    close_database()
    return [_Chat(n % users, cookies[n % users], "") for n in range(sockets)]


def _spawn_agents(chats: list[_Chat], sessions_per_agent: int) -> list[_Chat]:
    """One running agent per user, and a session for each chat with its user's agent."""
    from agents.models import Agent, Session
    from agents.services import agent_spawn
    from console.models import User

    agents = []
    for user in User.objects.filter(username__startswith="bench-ws-").order_by("username"):
        agent = agent_spawn(
            owner=user,
            name=f"bench-{user.username}",
            memory_mib=512,
            max_concurrent_sessions=sessions_per_agent,
        )
        agent.refresh_from_db()
        if agent.status != Agent.Status.RUNNING:
            raise RuntimeError(f"agent {agent.name} did not boot: {agent.last_error[:500]}")
        agents.append(agent)
    sessions = Session.objects.bulk_create(
        [
            Session(agent=agents[chat.user], user=agents[chat.user].owner, title=f"chat {n}")
            for n, chat in enumerate(chats)
        ],
        batch_size=500,
    )
    close_database()
    return [
        _Chat(chat.user, chat.cookie, str(session.pk))
        for chat, session in zip(chats, sessions, strict=True)
    ]


def _destroy_sandboxes() -> None:
    """Stop every sandbox this run started, whatever state the run ended in."""
    from agents import sandbox

    drv = sandbox.driver()
    for status in drv.list():
        with contextlib.suppress(Exception):
            drv.destroy(status.id)


def _sandbox_pids() -> list[int]:
    from agents import sandbox

    return [status.pid for status in sandbox.driver().list() if status.pid]


# --- Processes ---------------------------------------------------------------------------------


def _start_web(env: dict[str, str], log_dir: Path) -> tuple[Child, str]:
    """The web process as ``make run`` starts it (daphne on uvloop), once healthy; its URL."""
    from config.launch import web_command

    port = free_port()
    web = Child("daphne", [sys.executable, *web_command("127.0.0.1", port)], env, log_dir)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> str | None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health") as response:
            return url if response.status == 200 else None
        return None

    return web, wait_ready(web, healthy)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class _Cpu:
    """CPU seconds of each part of the system, between two readings."""

    parts: dict[str, list[int]]  # name -> pids (each with its descendants)
    start: dict[str, float] = field(default_factory=dict)
    began: float = 0.0

    def __post_init__(self) -> None:
        self.began = time.monotonic()
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        # This client's own process only: the others are its children.
        found = {
            name: sum(cpu_seconds(pid, descendants=name != "client") for pid in pids)
            for name, pids in self.parts.items()
        }
        if "daphne" in self.parts:  # its event loop's thread, where every chunk's work is done
            found["daphne loop"] = _thread_cpu_seconds(self.parts["daphne"][0])
        return found

    def spent(self) -> tuple[float, dict[str, float]]:
        now = self._read()
        return time.monotonic() - self.began, {k: now[k] - self.start[k] for k in now}


def _thread_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process's main thread."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    return sum(int(v) for v in stat.rsplit(")", 1)[1].split()[11:13]) / os.sysconf("SC_CLK_TCK")


def _describe_cpu(wall: float, spent: dict[str, float]) -> str:
    parts = ", ".join(
        f"{name} {seconds / wall:.0%}" for name, seconds in spent.items() if name != "daphne loop"
    )
    return f"CPU (share of one core): {parts}; {os.cpu_count()} cores"


def _raise_file_limit() -> int:
    """As many open files as allowed, for this process and the servers it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _report_ms3(name: str, value: float, target: float) -> str:
    """A TARGET line as ``harness.report`` writes it, for a figure of a fraction of a ms."""
    return report(name, value, "ms", "<=", target).replace(f" {value:.1f} ms", f" {value:.3f} ms")


# --- Sockets -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Socket:
    chat: _Chat
    ws: aiohttp.ClientWebSocketResponse
    seq: int  # the snapshot's
    frames: list[tuple[float, str]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    pong: asyncio.Event = field(default_factory=asyncio.Event)
    closed: str = ""

    async def read(self) -> None:
        """Note every frame with the moment it was read; answer the server's pings."""
        ws = self.ws
        while True:
            message = await ws.receive()
            now = time.monotonic()
            if message.type == aiohttp.WSMsgType.TEXT:
                self.frames.append((now, message.data))
                if json.loads(message.data).get("type") in ENDINGS:
                    self.ended.set()
            elif message.type == aiohttp.WSMsgType.PING:
                await ws.pong(message.data)
            elif message.type == aiohttp.WSMsgType.PONG:
                self.pong.set()
            else:
                self.closed = f"{message.type.name} {ws.close_code}"
                self.ended.set()
                return


async def _expect(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.receive(), 60)
    if message.type != aiohttp.WSMsgType.TEXT:
        raise Failed(f"expected {kind}, got {message.type.name} {ws.close_code}")
    event = json.loads(message.data)
    if event.get("type") != kind:
        raise Failed(f"expected {kind}, got {message.data[:300]}")
    return event


async def _open(session: aiohttp.ClientSession, url: str, origin: str, chat: _Chat) -> _Socket:
    """A socket as the chat page opens it: ``ready``, then ``open`` and its snapshot."""
    ws = await session.ws_connect(
        url,
        headers={"Origin": origin, "Cookie": chat.cookie},
        autoping=False,
        heartbeat=None,
        max_msg_size=0,
    )
    try:
        await _expect(ws, "ready")
        await ws.send_str(json.dumps({"type": "open", "session_id": chat.session_id}))
        snapshot = await _expect(ws, "session")
    except BaseException:
        await ws.close()
        raise
    return _Socket(chat, ws, snapshot["seq"])


@dataclass
class _Score:
    """What the streamed replies came to: each chunk's (fake write time, added ms), the first
    chunks' added ms, when each reply's first chunk was written, and what went wrong."""

    latencies: list[tuple[float, float]] = field(default_factory=list)
    firsts: list[float] = field(default_factory=list)
    began: list[float] = field(default_factory=list)
    received: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Reply:
    """What one socket read in a round: its prompt, the ``seq`` it had seen before, its frames
    (with the moment each was read), and whether the reply ended."""

    prompt: str
    seq: int
    frames: list[tuple[float, str]]
    ended: bool


@dataclass(frozen=True)
class _Round:
    """One round of prompts: when it began and how long it took, the CPU each part spent, and
    every socket's reply."""

    started: float
    seconds: float
    wall: float
    spent: dict[str, float]
    replies: list[_Reply]


@dataclass(frozen=True)
class _Steady:
    """The web process's CPU per chunk while replies only streamed (and its event loop's
    thread's), and the replies of that round."""

    per_chunk: float
    loop_per_chunk: float
    replies: list[_Reply]


def _score(replies: list[_Reply], emitted: dict[str, list[tuple[float, str]]]) -> _Score:
    """Check each socket's events against the deltas the fake wrote for its prompt."""
    score = _Score()
    for one in replies:
        prompt = one.prompt
        tag = prompt.split(" ", 1)[0]
        problems_before = len(score.problems)
        wrote = emitted.get(tag, [])
        reply = "".join(text for _, text in wrote)
        events = [(when, json.loads(raw)) for when, raw in one.frames]
        deltas = [(when, e["text"]) for when, e in events if e["type"] == "delta"]
        score.received += len(deltas)
        seqs = [e.get("seq") for _, e in events]
        expected = list(range(one.seq + 1, one.seq + 1 + len(events)))
        if seqs != expected:
            score.problems.append(f"{tag}: seq {seqs[:5]}… instead of {expected[:5]}…")
        last = events[-1][1] if events else {}
        if not events or events[0][1]["type"] != "turn_started":
            score.problems.append(f"{tag}: began with {json.dumps(events[:1])[:300]}")
        if last.get("type") != "done":
            score.problems.append(f"{tag}: ended with {json.dumps(last)[:300]}")
        elif last["messages"][-1]["content"] != reply:
            score.problems.append(f"{tag}: done recorded another reply")
        if reply != f"Echo: {prompt}":
            score.problems.append(f"{tag}: the fake wrote {len(wrote)} deltas, not the echo")
        if wrote:
            score.began.append(wrote[0][0])
        score.lost += len(score.problems) - problems_before
        matcher = difflib.SequenceMatcher(
            a=[text for _, text in wrote], b=[text for _, text in deltas], autojunk=False
        )
        matched = 0
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                at = wrote[block.a + k][0]
                added = (deltas[block.b + k][0] - at) * 1000
                score.latencies.append((at, added))
                if block.a + k == 0:
                    score.firsts.append(added)
            matched += block.size
        score.lost += (len(wrote) - matched) + (len(deltas) - matched)
    return score


# --- The bench ---------------------------------------------------------------------------------


@dataclass
class _Bench:
    args: argparse.Namespace
    url: str
    daphne: Child
    cpu_parts: dict[str, list[int]]
    record: Path
    fake: Child
    targets: list[str] = field(default_factory=list)
    sockets: list[_Socket] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def idle(self, session: aiohttp.ClientSession, chats: list[_Chat]) -> None:
        args = self.args
        ws_url = self.url.replace("http://", "ws://") + "/ws/chat/"
        # Warm up: the first sockets load code and fill caches that every later one shares.
        warm = [await _open(session, ws_url, self.url, chat) for chat in chats[:20]]
        for sock in warm:
            await sock.ws.close()
        await asyncio.sleep(1)
        before = _rss_kib(self.daphne.proc.pid)
        print(
            f"\nidle: opening {len(chats)} sockets "
            f"({CONNECTS_IN_FLIGHT} handshakes at a time); daphne RSS {before / 1024:.1f} MiB",
            flush=True,
        )
        gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
        times: list[float] = []
        failures: list[str] = []
        cpu = _Cpu({"daphne": [self.daphne.proc.pid]})
        started = time.monotonic()

        async def one(chat: _Chat) -> None:
            async with gate:
                began = time.monotonic()
                try:
                    sock = await _open(session, ws_url, self.url, chat)
                except CLIENT_ERRORS as exc:
                    failures.append(str(exc) or type(exc).__name__)
                    return
                times.append((time.monotonic() - began) * 1000)
                self.sockets.append(sock)
                self.readers.append(asyncio.create_task(sock.read()))
                if len(self.sockets) % 1000 == 0:
                    print(f"  {len(self.sockets)} open", flush=True)

        await asyncio.gather(*(one(chat) for chat in chats))
        seconds = time.monotonic() - started
        wall, spent = cpu.spent()
        print(
            f"  {len(self.sockets)} open in {seconds:.1f} s ({len(self.sockets) / seconds:.0f}/s);"
            f" connect+ready+open+snapshot p50 {percentile(times, 50):.0f} "
            f"p99 {percentile(times, 99):.0f} ms; daphne CPU {spent['daphne'] / wall:.0%} of a "
            f"core, {spent['daphne'] / max(1, len(times)) * 1000:.1f} ms per socket"
        )
        if failures:
            print(f"  {len(failures)} failed, e.g. {failures[0][:300]}")
        await asyncio.sleep(2)  # let the last handshakes' garbage go
        after = _rss_kib(self.daphne.proc.pid)
        per = (after - before) / max(1, len(self.sockets))
        print(
            f"  daphne RSS {after / 1024:.1f} MiB: +{(after - before) / 1024:.1f} MiB for "
            f"{len(self.sockets)} sockets, {per:.1f} KiB each"
        )
        cpu = _Cpu({"daphne": [self.daphne.proc.pid]})
        await asyncio.sleep(args.idle_seconds)
        wall, spent = cpu.spent()
        for sock in self.sockets:
            sock.pong.clear()
        await asyncio.gather(*(sock.ws.ping() for sock in self.sockets if not sock.ws.closed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(sock.pong.wait() for sock in self.sockets)), 30)
        alive = sum(1 for sock in self.sockets if sock.pong.is_set() and not sock.closed)
        closed = [sock.closed for sock in self.sockets if sock.closed]
        print(
            f"  after {args.idle_seconds:g} s idle: {alive} of {len(chats)} answer a ping"
            + (f"; {len(closed)} closed, e.g. {closed[0]}" if closed else "")
            + f"; daphne CPU while idle {spent['daphne'] / wall:.1%} of a core",
            flush=True,
        )
        if args.sockets < 5000:
            print(f"  (--quick: {args.sockets} sockets, not the target's 5,000)")
        self.targets.append(report("ws_idle_memory_per_conn", per, "KiB", "<=", 100))
        self.targets.append(report("ws_idle_sockets_lost", len(chats) - alive, "sockets", "<=", 0))

    async def stream(self) -> None:
        args = self.args
        chosen = self.sockets[: args.streams]
        if len(chosen) < args.streams:
            raise RuntimeError(f"only {len(chosen)} sockets are open, {args.streams} needed")
        steady = await self._steady_cpu(chosen[: args.cpu_chats])
        # Longer than the gateway's keep-alive (uvicorn's 5 s): a runtime's pooled connection
        # that the far side closes just as a turn reuses it fails that turn (gateway_unreachable),
        # which prompts spread over 5 s after a round met about once a run.
        await asyncio.sleep(KEEP_ALIVE_PAUSE)
        when = "at once" if not args.spread_ms else f"spread evenly over {args.spread_ms:g} ms"
        prompts = {
            sock: " ".join(f"c{n}w{k}" for k in range(args.words)) for n, sock in enumerate(chosen)
        }
        print(
            f"\nstreaming: {len(chosen)} sockets send a prompt {when}; the fake writes "
            f"{args.words + 1} deltas each, {args.chunk_delay_ms:g} ms apart",
            flush=True,
        )
        streamed = await self._round(prompts)
        self.fake.stop()  # its record is complete once it has stopped
        emitted = _emitted(self.record)
        steady_score = _score(steady.replies, emitted)
        score = _score(streamed.replies, emitted)
        if args.latencies_csv:
            with args.latencies_csv.open("w") as out:
                out.write("written_s,added_ms\n")  # seconds since the prompts were sent
                for at, added in sorted(score.latencies):
                    out.write(f"{at - streamed.started:.4f},{added:.2f}\n")
        chunks = len(score.latencies)
        latencies = [lat for _, lat in score.latencies]
        p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
        ended = sum(1 for r in streamed.replies if r.ended)
        print(
            f"  {ended} of {len(chosen)} replies ended in {streamed.seconds:.1f} s; "
            f"{score.received} chunks received, {chunks / streamed.seconds:.0f} chunks/s"
        )
        print(
            f"  added latency per chunk (socket read - fake write): p50 {p50:.1f} p95 {p95:.1f} "
            f"p99 {p99:.1f} max {max(latencies, default=math.nan):.1f} ms"
        )
        # Chunks written while other turns were still starting wait behind that work; the
        # steady state is once every reply has begun.
        all_begun = max(score.began, default=math.inf)
        later = [lat for at, lat in score.latencies if at > all_begun]
        print(
            f"  first chunk of each reply: p50 {percentile(score.firsts, 50):.1f} "
            f"p99 {percentile(score.firsts, 99):.1f} ms; once every reply had begun "
            f"({len(later)} chunks): p50 {percentile(later, 50):.1f} "
            f"p95 {percentile(later, 95):.1f} p99 {percentile(later, 99):.1f} ms"
        )
        print(f"  {_describe_cpu(streamed.wall, streamed.spent)}")
        web = streamed.spent["daphne"]
        print(
            f"  web process (daphne): {web:.2f} s CPU for the round's {score.received} chunks "
            f"and {len(chosen)} turns, {web / max(1, score.received) * 1000:.3f} ms per chunk "
            f"all told; {steady.per_chunk:.3f} ms per chunk while replies only streamed "
            f"(its event loop's thread {steady.loop_per_chunk:.3f} ms)"
        )
        lost = score.lost + steady_score.lost
        if problems := steady_score.problems + score.problems:
            print(f"  {len(problems)} problems, e.g.:")
            for problem in problems[:5]:
                print(f"    {problem}")
        idle_closed = [s.closed for s in self.sockets if s.closed]
        if idle_closed:
            print(f"  {len(idle_closed)} sockets closed meanwhile, e.g. {idle_closed[0]}")
        n = len(chosen)
        self.targets.append(_report_ms3("ws_web_cpu_per_chunk", steady.per_chunk, 0.15))
        self.targets.append(report(f"ws_stream_added_p99_{n}chats", p99, "ms", "<=", 100))
        self.targets.append(report(f"ws_lost_chunks_{n}chats", lost, "chunks", "<=", 0))

    async def _steady_cpu(self, chosen: list[_Socket]) -> _Steady:
        """What a streamed chunk costs the web process: ``chosen`` send long prompts at once,
        and its CPU is read from the moment every reply has begun to the moment the first one
        ends, when nothing but chunks flows (no turn starts or ends: they cost tens of chunks
        each, and vary with the machine's load)."""
        args = self.args
        words = args.cpu_words
        prompts = {
            sock: " ".join(f"p{n}w{k}" for k in range(words)) for n, sock in enumerate(chosen)
        }
        print(
            f"\nsteady streaming: {len(chosen)} sockets send a prompt at once; the fake writes "
            f"{words + 1} deltas each, {args.chunk_delay_ms:g} ms apart",
            flush=True,
        )
        daphne = {"daphne": self.cpu_parts["daphne"]}
        window: list[tuple[float, dict[str, float]]] = []

        async def watch() -> None:
            while not all(any('"delta"' in raw for _, raw in s.frames) for s in chosen):
                await asyncio.sleep(0.02)
            cpu = _Cpu(daphne)
            while not any(s.ended.is_set() for s in chosen):
                await asyncio.sleep(0.02)
            wall, spent = cpu.spent()
            window.extend([(cpu.began, spent), (cpu.began + wall, spent)])

        watcher = asyncio.create_task(watch())
        done = await self._round(prompts, spread_ms=0)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        if not window:
            raise RuntimeError("the steady window was never seen: every reply must begin")
        (began, spent), (until, _) = window
        delivered = sum(
            1
            for reply in done.replies
            for at, raw in reply.frames
            if began <= at <= until and '"delta"' in raw
        )
        per_chunk = spent["daphne"] / max(1, delivered) * 1000
        loop = spent["daphne loop"] / max(1, delivered) * 1000
        print(
            f"  {delivered} chunks in the {until - began:.1f} s while every reply streamed: "
            f"daphne {spent['daphne']:.2f} s CPU, {per_chunk:.3f} ms per chunk",
            flush=True,
        )
        return _Steady(per_chunk, loop, done.replies)

    async def _round(self, prompts: dict[_Socket, str], spread_ms: float | None = None) -> _Round:
        """Send each socket its prompt (spread over ``--spread-ms``) and wait for every reply
        to end; the CPU each part spent meanwhile."""
        args = self.args
        spread = args.spread_ms if spread_ms is None else spread_ms
        for sock in prompts:
            sock.frames.clear()
            sock.ended.clear()
        cpu = _Cpu(self.cpu_parts)
        started = time.monotonic()

        async def send(n: int, sock: _Socket, prompt: str) -> None:
            await asyncio.sleep(spread / 1000 * n / len(prompts))
            frame = {"type": "send", "session_id": sock.chat.session_id, "content": prompt}
            await sock.ws.send_str(json.dumps(frame))

        await asyncio.gather(*(send(n, *item) for n, item in enumerate(prompts.items())))
        words = max(len(prompt.split()) for prompt in prompts.values())
        budget = 60 + words * args.chunk_delay_ms / 1000 * 3
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.ended.wait() for s in prompts)), budget)
        seconds = time.monotonic() - started
        wall, spent = cpu.spent()
        replies = []
        for sock, prompt in prompts.items():
            replies.append(_Reply(prompt, sock.seq, list(sock.frames), sock.ended.is_set()))
            if sock.frames:  # the next round's events follow this one's last
                sock.seq = json.loads(sock.frames[-1][1]).get("seq", sock.seq)
        return _Round(started, seconds, wall, spent, replies)

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.ws.close() for s in self.sockets), return_exceptions=True), 30
            )


async def _measure(bench: _Bench, chats: list[_Chat]) -> None:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        try:
            await bench.idle(session, chats)
            await bench.stream()
        finally:
            await bench.close()


def _run(args: argparse.Namespace, var_dir: Path, files: int) -> list[str]:
    """Start everything in ``var_dir``, measure, and stop it all again; the TARGET lines."""
    children: list[Child] = []
    set_up = False
    bench: _Bench | None = None
    try:
        _environment(var_dir, args.database_url, args.redis_url)
        key = f"sk-ant-bench-{secrets.token_hex(8)}"
        record = var_dir / "emitted.txt"
        server_env = dict(os.environ)
        fake, fake_url = _start_fake(server_env, var_dir, key, args.chunk_delay_ms / 1000, record)
        children.append(fake)
        chats = _setup(args.agents, args.sockets)
        set_up = True
        server_env |= {"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": fake_url}
        gateway, gateway_url = start_console(server_env, var_dir, "gateway", 1)
        children.append(gateway)
        server_env["GATEWAY_URL"] = f"{gateway_url}/gateway"
        daphne, url = _start_web(server_env, var_dir)
        children.append(daphne)
        from django.conf import settings
        from django.db import connection

        settings.GATEWAY_URL = server_env["GATEWAY_URL"]  # where the agents call Claude
        chats = _spawn_agents(chats, math.ceil(args.streams / args.agents) + 50)
        print(
            f"chat WebSocket on daphne, database {connection.vendor}, "
            f"{'Redis' if args.redis_url else 'in-memory'} channel layer and replay log; "
            f"{args.agents} agents (process backend), the gateway process; "
            f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); "
            f"open files limit {files}",
            flush=True,
        )
        parts = {
            "daphne": [daphne.proc.pid],
            "gateway": [gateway.proc.pid],
            "agents": _sandbox_pids(),
            "fake": [fake.proc.pid],
            "client": [os.getpid()],
        }
        bench = _Bench(args, url, daphne, parts, record, fake)
        asyncio.run(_measure(bench, chats))
        daphne.check_alive()  # a crash under load would void the figures
        if error := daphne.first_error():
            print(f"\nthe web process logged errors; the first ends:\n{error}")
        if error := gateway.first_error():
            print(f"\nthe gateway logged errors; the first ends:\n{error}")
    finally:
        for child in reversed(children):
            child.stop()
        if set_up:
            _destroy_sandboxes()
            close_database()
    return bench.targets if bench else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument("--sockets", type=int, help="idle sockets (default 5000; quick 1000)")
    parser.add_argument("--streams", type=int, help="replies streamed at once (500; quick 100)")
    parser.add_argument("--agents", type=int, default=10, help="agents (and users) to spread over")
    parser.add_argument("--words", type=int, default=20, help="words in each prompt and reply")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=100.0, help="the fake's pause between deltas"
    )
    parser.add_argument("--idle-seconds", type=float, help="how long the sockets stay idle")
    parser.add_argument(
        "--cpu-chats", type=int, default=50, help="chats of the round that measures CPU per chunk"
    )
    parser.add_argument(
        "--cpu-words", type=int, help="words in each reply of that round (60; quick 40)"
    )
    parser.add_argument(
        "--spread-ms",
        type=float,
        default=5000.0,
        help="send the prompts spread evenly over this long (default 5000; 0: all at once)",
    )
    parser.add_argument(
        "--latencies-csv", type=Path, help="write each chunk's write time and added latency here"
    )
    parser.add_argument(
        "--database-url", type=database_url, help="a PostgreSQL database to create, use and drop"
    )
    parser.add_argument("--redis-url", help="a Redis database to use and flush (before and after)")
    parser.add_argument("--serve-fake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fake-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        _serve_fake(args.serve_fake, args.chunk_delay_ms / 1000, args.fake_key)
        return
    args.sockets = args.sockets or (1000 if args.quick else 5000)
    args.streams = args.streams or (100 if args.quick else 500)
    args.idle_seconds = args.idle_seconds or (3.0 if args.quick else 10.0)
    if args.streams > args.sockets:
        parser.error("--streams cannot exceed --sockets")
    args.cpu_chats = min(args.cpu_chats, args.streams)
    args.cpu_words = args.cpu_words or (40 if args.quick else 60)
    # Each user has the default quota: at most 50 gateway calls in flight, 100 a minute.
    per_agent = math.ceil(args.streams / args.agents)
    if per_agent > DEFAULT_CONCURRENT_REQUESTS:
        fewest = math.ceil(args.streams / DEFAULT_CONCURRENT_REQUESTS)
        parser.error(f"{per_agent} streams per agent (and user): use at least {fewest} agents")
    files = _raise_file_limit()
    if files < args.sockets + 1000:
        parser.error(f"{args.sockets} sockets need more open files than the limit of {files}")
    interrupt_on_signals()

    began = time.perf_counter()
    targets: list[str] = []
    with (
        scratch_database(args.database_url),
        tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp,
    ):
        if args.redis_url:
            _flush_redis(args.redis_url)
        try:
            targets = _run(args, Path(tmp), files)
        finally:
            if args.redis_url:
                _flush_redis(args.redis_url)
    print_summary(began, targets)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; everything it started is stopped")
