"""``make run`` stays up: its launcher, with its real processes and real sandboxes, under mixed
load (gateway calls, spawns, chats, stops and deletions) while its Celery worker is killed
(SIGKILL), each time in the middle of a boot. Web and gateway never refuse a connection, the
worker is restarted, every agent ends in a true state (its status matches its sandbox and its
runtime's /health) and every upstream call is billed once.

``soak()`` is the scenario; ``bench/soak.py`` runs it for 10 minutes.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.config.test_launch import Console
from tests.fakes.anthropic import FakeAnthropic
from tests.polling import eventually
from tests.servers import answers
from vmdriver import SandboxNotFound, VmState, make_driver

__all__ = ["Soak", "soak"]

_SETTLED = {"running", "stopped", "failed"}


@dataclass
class Soak:
    """What a run saw."""

    seconds: float = 0.0
    probes: int = 0
    refused: list[str] = field(default_factory=list)
    kills: int = 0
    restarts: int = 0
    spawns: int = 0
    chats: int = 0
    stops: int = 0
    deletes: int = 0
    gateway_calls: int = 0
    errors: list[str] = field(default_factory=list)
    agents: int = 0
    false_states: list[str] = field(default_factory=list)
    calls_made: int = 0
    calls_billed: int = 0
    stopped_cleanly: bool = False


def soak(
    tmp_path: Path,
    *,
    seconds: float,
    kills: int,
    max_agents: int = 4,
    ports: tuple[int, int] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Soak:
    """Run the console for ``seconds`` of mixed load, killing its worker ``kills`` times."""
    result = Soak()
    with FakeAnthropic() as fake:
        console = Console(
            tmp_path,
            {
                "ANTHROPIC_API_KEY": "sk-ant-soak",
                "ANTHROPIC_BASE_URL": fake.base_url,
                "AGENT_IDLE_TIMEOUT_SECONDS": "0",
                "RECONCILE_INTERVAL_SECONDS": "15",
            },
            ports,
        )
        try:
            _run(console, fake, result, seconds, kills, max_agents, say)
            result.stopped_cleanly = console.interrupt() == 0
        finally:
            console.kill()
    return result


def _run(
    console: Console,
    fake: FakeAnthropic,
    result: Soak,
    seconds: float,
    kills: int,
    max_agents: int,
    say: Callable[[str], None],
) -> None:
    eventually(
        console.healthy,
        90,
        every=0.2,
        failing="timed out waiting for the console to answer /health",
    )
    gateway = f"http://127.0.0.1:{console.gateway_port}"
    eventually(
        lambda: answers(f"{gateway}/health"),
        30,
        every=0.2,
        failing="timed out waiting for the gateway",
    )
    key = console.manage("create_api_key", "soak", "--create-user").strip()
    # An integration this busy (5 gateway calls a second, and the agents' own) has its request
    # rate raised by its operator; at the default 100 a minute the soak would meet 429s.
    console.manage(
        "shell",
        "-c",
        "from console.models import Quota, User; Quota.objects.update_or_create("
        "user=User.objects.get(username='soak'), defaults={'requests_per_minute': None})",
    )
    load = _Load(console, gateway, key, result, max_agents)
    eventually(
        load.host_online,
        60,
        every=0.2,
        failing="timed out waiting for the worker to register its sandbox host",
    )
    say(f"console up on {console.url}; load for {seconds:.0f} s, {kills} worker kills")

    stop = threading.Event()
    threads = [
        threading.Thread(target=_probe, args=(f"{console.url}/health", result, stop)),
        threading.Thread(target=_probe, args=(f"{gateway}/health", result, stop)),
        threading.Thread(target=load.gateway_calls, args=(stop,)),
        threading.Thread(target=load.lifecycle, args=(stop,)),
    ]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    try:
        for n in range(kills):
            _sleep_until(began + seconds * (n + 1) / (kills + 1), stop)
            load.kill_worker_mid_boot(say)
        _sleep_until(began + seconds, stop)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    result.seconds = time.monotonic() - began
    result.restarts = len(re.findall(r"worker started \(pid=\d+, restart", console.output()))
    say("load over; waiting for every agent to settle")
    eventually(
        load.settled,
        120,
        every=0.2,
        failing="timed out waiting for every agent to settle (running, stopped or failed)",
    )
    result.false_states, result.agents = _false_states(console), len(load.agents())
    result.calls_made = sum(1 for r in fake.requests if r.path == "/v1/messages")
    result.calls_billed = _billed(console)


def _sleep_until(deadline: float, stop: threading.Event) -> None:
    stop.wait(max(0.0, deadline - time.monotonic()))


def _probe(url: str, result: Soak, stop: threading.Event) -> None:
    """Connect every 50 ms; a refused connection is what a load balancer would see as down."""
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            result.probes += 1
            try:
                client.get(url, headers={"connection": "close"})
            except httpx.ConnectError as exc:
                result.refused.append(f"{time.strftime('%H:%M:%S')} {url}: {exc}")
            except httpx.HTTPError as exc:
                result.errors.append(f"probe {url}: {exc!r}")
            stop.wait(0.05)


class _Load:
    def __init__(
        self, console: Console, gateway: str, key: str, result: Soak, max_agents: int
    ) -> None:
        self.console, self.gateway, self.result = console, gateway, result
        self.max_agents = max_agents
        self.headers = {"Authorization": f"Bearer {key}"}
        self.api = httpx.Client(base_url=console.url, timeout=60, headers=self.headers)
        self.random = random.Random(15)
        self.booting: list[str] = []

    def host_online(self) -> bool:
        response = self.api.post("/v1/agents/spawn", json=self._body())
        if response.status_code == 201:
            self.result.spawns += 1
            return True
        return False

    def _body(self) -> dict[str, object]:
        return {"cores": 1, "memory": 256, "max_concurrent": 50, "system_prompt": "Hi."}

    def agents(self) -> list[tuple[str, str, bool]]:
        """Every agent's id, status and whether it is deleted."""
        with _database(self.console) as db:
            rows = db.execute("SELECT id, status, deleted_at FROM agents_agent").fetchall()
        return [(str(uuid.UUID(id_)), status, deleted is not None) for id_, status, deleted in rows]

    def settled(self) -> bool:
        return all(status in _SETTLED for _, status, _ in self.agents())

    def spawn(self) -> str | None:
        response = self.api.post("/v1/agents/spawn", json=self._body())
        if response.status_code != 201:
            self.result.errors.append(f"spawn: {response.status_code} {response.text[:200]}")
            return None
        self.result.spawns += 1
        return str(response.json()["agent_id"])

    def gateway_calls(self, stop: threading.Event) -> None:
        body = {"model": "claude-haiku-4-5", "max_tokens": 16}
        with httpx.Client(base_url=self.gateway, timeout=30, headers=self.headers) as client:
            while not stop.is_set():
                text = f"call {self.result.gateway_calls}"
                try:
                    response = client.post(
                        "/gateway/v1/messages",
                        json={**body, "messages": [{"role": "user", "content": text}]},
                    )
                    if response.status_code == 200:
                        self.result.gateway_calls += 1
                    else:
                        self.result.errors.append(f"gateway: {response.status_code}")
                except httpx.HTTPError as exc:
                    self.result.errors.append(f"gateway: {exc!r}")
                stop.wait(0.2)

    def lifecycle(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._step()
            except httpx.HTTPError as exc:
                self.result.errors.append(f"lifecycle: {exc!r}")
            stop.wait(0.5)

    def _step(self) -> None:
        agents = [(id_, status) for id_, status, deleted in self.agents() if not deleted]
        live = [id_ for id_, status in agents if status in ("pending", "starting", "running")]
        running = [id_ for id_, status in agents if status == "running"]
        roll = self.random.random()
        if len(live) < self.max_agents and roll < 0.4:
            self.spawn()
        elif running and roll < 0.8:
            self._chat(self.random.choice(running))
        elif running and roll < 0.9:
            agent = self.random.choice(running)
            self._expect(self.api.post(f"/api/v1/agents/{agent}/stop"), "stop")
            self.result.stops += 1
        elif running:
            agent = self.random.choice(running)
            deleted = self.api.delete("/v1/agents/delete", params={"agent_id": agent})
            self._expect(deleted, "delete")
            self.result.deletes += 1

    def _chat(self, agent: str) -> None:
        reply = self.api.post(
            f"/agents/{agent}/v1/agent/chat",
            json={"prompt": "Hello there", "user_id": "soak", "max_tokens": 32, "stream": False},
        )
        if self._expect(reply, "chat"):
            self.result.chats += 1

    def _expect(self, response: httpx.Response, what: str) -> bool:
        if response.status_code < 300:
            return True
        self.result.errors.append(f"{what}: {response.status_code} {response.text[:200]}")
        return False

    def kill_worker_mid_boot(self, say: Callable[[str], None]) -> None:
        """Spawn, and SIGKILL the worker as soon as the boot has begun."""
        pid = _worker_pid(self.console)
        agent_id, status = self.spawn(), "not spawned"

        def booting() -> bool:
            nonlocal status
            status = next(s for id_, s, _ in self.agents() if id_ == agent_id)
            return status != "pending"

        if agent_id:
            eventually(booting, 10)  # or kill it all the same, with the agent still pending
        os.kill(pid, signal.SIGKILL)
        self.result.kills += 1
        say(f"killed the worker (pid {pid}) with agent {agent_id} {status}")


def _worker_pid(console: Console) -> int:
    return int(re.findall(r"worker started \(pid=(\d+)", console.output())[-1])


def _database(console: Console) -> sqlite3.Connection:
    return sqlite3.connect(Path(console.env["CONSOLE_VAR_DIR"]) / "console.sqlite3", timeout=30)


def _billed(console: Console) -> int:
    with _database(console) as db:
        return db.execute("SELECT COUNT(*) FROM console_usagerecord").fetchone()[0]


def _false_states(console: Console) -> list[str]:
    """Each agent whose status its sandbox and runtime contradict: running means a running
    sandbox whose runtime answers /health; any other status, no running sandbox."""
    var = Path(console.env["CONSOLE_VAR_DIR"])
    driver = make_driver("process", state_dir=var / "sandboxes")
    with _database(console) as db:
        rows = db.execute("SELECT id, status, sandbox_id FROM agents_agent").fetchall()
    false = []
    for agent_id, status, sandbox_id in rows:
        try:
            sandbox = driver.status(sandbox_id)
        except SandboxNotFound:
            sandbox = None
        running = sandbox is not None and sandbox.state == VmState.RUNNING
        healthy = running and _healthy(sandbox.endpoint)
        if (status == "running") != healthy or (status != "running" and running):
            false.append(f"{agent_id}: {status}, sandbox running={running}, healthy={healthy}")
    return false


def _healthy(endpoint: str) -> bool:
    transport = httpx.HTTPTransport(uds=endpoint.removeprefix("unix:"))
    try:
        with httpx.Client(transport=transport, base_url="http://sandbox", timeout=5) as client:
            return client.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(300)  # 50 s of load, with the start and the settling around it
def test_make_run_stays_up_while_its_worker_is_killed_under_load(tmp_path):
    result = soak(tmp_path, seconds=50, kills=2)

    assert result.refused == [], result.refused[:5]
    assert result.kills == 2 and result.restarts >= 2
    assert result.false_states == [], result.false_states
    assert result.calls_made == result.calls_billed > 0
    assert result.spawns >= 3 and result.chats > 0 and result.gateway_calls > 0
    assert result.stopped_cleanly
