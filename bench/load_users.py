"""The simulated users of ``bench/load.py``: locust, run as a library in a process of its own
(gevent patches the standard library on import, which the console's own code must not meet).

    python bench/load_users.py PLAN.json RESULTS.json

``PLAN.json`` (written by ``bench/load.py``) names the console, the users' credentials, how many
users to start and how fast, the think time, and the fake Anthropic's pause between deltas.
Each user, once started:

* finds its account's agent: the account's first user spawns it (``POST /v1/agents/spawn``,
  the boot timed until ``GET /v1/agents/get`` says ``running``) or reuses one already running
  that this bench spawned; the account's other users wait for it and reuse it;
* opens a session of its own on it (``POST /api/v1/sessions``);
* then, until the run ends, sends a turn and waits for the whole reply, then thinks (a uniform
  pause between the plan's bounds): over the Hypercore route as JSON
  (``POST /agents/<id>/v1/agent/chat``), over the same route as server-sent events
  (``"stream": true``, read to ``done``), or over the chat WebSocket (``/ws/chat/``, signed in
  with its account's session cookie: ``open`` the session once, then ``send`` and read to
  ``done``; a refused or dropped socket is opened again as the chat page does).

Each turn is recorded as ``[kind, started, total ms, upstream ms, error or ""]``. Upstream ms is
the time the fake Anthropic spends by design: its reply echoes the prompt one word-sized delta
at a time, and it pauses the plan's ``chunk_delay`` before every delta but the first, so a turn
with a reply of ``n`` deltas holds ``(n - 1) * chunk_delay`` of upstream time. The fake's own
processing is left in, which only makes the console's figure larger.
"""

from __future__ import annotations

# gevent's patching must come before anything imports ssl, socket or threading.
from gevent import monkey

monkey.patch_all()

import itertools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402
import websocket  # noqa: E402
from gevent.event import AsyncResult  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402

AGENT_NAME = "bench-load"
BOOT_SECONDS = 180.0
TURN_SECONDS = 120.0
RECONNECTS = 5
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india")


def _pieces(text: str) -> int:
    """How many word-sized deltas the fake Anthropic streams ``text`` in (its ``_pieces``)."""
    return len([p for p in re.split(r"(?<=\s)(?=\S)", text) if p])


class Refused(Exception):
    """An answer other than the one expected; its message says which."""


class _Plan:
    """The plan, read once, and what the users share: each account's agent."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.url: str = data["url"]
        self.users: list[dict[str, Any]] = data["users"]
        self.think: tuple[float, float] = (data["think"][0], data["think"][1])
        self.chunk_delay: float = data["chunk_delay"]
        self.sessions_per_agent: int = data["sessions_per_agent"]
        self.next_user = itertools.count()
        self.agents: dict[str, AsyncResult] = {}
        self.turns: list[list[Any]] = []
        self.spawns: list[list[Any]] = []
        self.setup_errors: list[str] = []
        self.reconnects: list[str] = []


PLAN: _Plan


def _check(response: requests.Response, expected: int, what: str) -> dict[str, Any]:
    if response.status_code != expected:
        raise Refused(f"{what}: HTTP {response.status_code} {response.text[:200]}")
    return response.json()  # type: ignore[no-any-return]


class ChatUser(User):
    """One person: an agent of their account, a session of their own, a turn per think."""

    wait_time = between(5, 15)  # replaced by the plan's bounds in ``run``

    def on_start(self) -> None:
        self.me = PLAN.users[next(PLAN.next_user) % len(PLAN.users)]
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.me['key']}"
        self.socket: websocket.WebSocket | None = None
        self.turn = 0
        self.session_id = ""
        try:
            self.agent_id = self._agent()
            answer = self.http.post(
                f"{PLAN.url}/api/v1/sessions", json={"agent_id": self.agent_id}, timeout=60
            )
            self.session_id = _check(answer, 201, "session")["session_id"]
            if self.me["kind"] == "ws":
                self.socket = self._open_socket()
        except (Refused, OSError, ValueError, websocket.WebSocketException) as exc:
            PLAN.setup_errors.append(f"{self.me['kind']}: {exc}")
            self.stop()  # wait_time and tasks never run for a user with nothing to chat with

    def on_stop(self) -> None:
        if self.socket is not None:
            self.socket.close()

    # --- Setup ------------------------------------------------------------------------------

    def _agent(self) -> str:
        """The account's agent: spawned by the account's first user, shared by the rest."""
        account = self.me["account"]
        shared = PLAN.agents.get(account)
        if shared is None:
            shared = PLAN.agents[account] = AsyncResult()
            try:
                shared.set(self._spawn_or_reuse())
            except Exception as exc:
                shared.set_exception(exc)
        return shared.get(timeout=BOOT_SECONDS)  # type: ignore[no-any-return]

    def _spawn_or_reuse(self) -> str:
        listed = _check(self.http.get(f"{PLAN.url}/v1/agents/list", timeout=60), 200, "list")
        for agent in listed["agents"]:
            if agent["name"] == AGENT_NAME and agent["status"] in (
                "running",
                "pending",
                "starting",
            ):
                return self._running(agent["agent_id"], None)
        started = time.monotonic()
        body: dict[str, Any] = {
            "name": AGENT_NAME,
            "cores": 1,
            "memory": 512,
            "max_concurrent": PLAN.sessions_per_agent,
        }
        answer = self.http.post(f"{PLAN.url}/v1/agents/spawn", json=body, timeout=60)
        return self._running(_check(answer, 201, "spawn")["agent_id"], started)

    def _running(self, agent_id: str, started: float | None) -> str:
        deadline = time.monotonic() + BOOT_SECONDS
        url = f"{PLAN.url}/v1/agents/get"
        while time.monotonic() < deadline:
            status = _check(
                self.http.get(url, params={"agent_id": agent_id}, timeout=60), 200, "get"
            )
            if status["status"] == "running":
                if started is not None:
                    PLAN.spawns.append([agent_id, (time.monotonic() - started) * 1000])
                return agent_id
            if status["status"] in ("failed", "stopped", "stopping"):
                raise Refused(f"agent {agent_id} is {status['status']}")
            gevent.sleep(0.5)
        raise Refused(f"agent {agent_id} did not boot in {BOOT_SECONDS:g} s")

    def _open_socket(self) -> websocket.WebSocket:
        """The socket, as the chat page opens it: after a refused or dropped connection it
        tries again after 0.5 s, doubling up to 10 s (``config/static/console/chat.js``); here
        ``RECONNECTS`` times at most."""
        ws_url = PLAN.url.replace("http", "ws", 1) + "/ws/chat/"
        for attempt in itertools.count():
            try:
                sock = websocket.create_connection(
                    ws_url, cookie=self.me["cookie"], origin=PLAN.url, timeout=TURN_SECONDS
                )
                try:
                    self._read_until(sock, {"ready"})
                    sock.send(json.dumps({"type": "open", "session_id": self.session_id}))
                    self._read_until(sock, {"session"})
                except BaseException:
                    sock.close()
                    raise
                return sock
            except (OSError, websocket.WebSocketException) as exc:
                if attempt == RECONNECTS:
                    raise
                PLAN.reconnects.append(str(exc)[:200] or type(exc).__name__)
                gevent.sleep(min(10.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    @staticmethod
    def _read_until(sock: websocket.WebSocket, kinds: set[str]) -> dict[str, Any]:
        while True:
            event = json.loads(sock.recv())
            if event.get("type") in kinds:
                return event  # type: ignore[no-any-return]
            if event.get("type") == "error":
                error = event["error"]
                raise Refused(f"{error.get('code')}: {error.get('message', '')[:200]}")

    # --- Turns ------------------------------------------------------------------------------

    @task
    def chat(self) -> None:
        kind = self.me["kind"]
        self.turn += 1
        prompt = f"{self.me['name']} turn {self.turn} " + " ".join(random.sample(WORDS, 6))
        upstream = (_pieces(f"Echo: {prompt}") - 1) * PLAN.chunk_delay * 1000
        started = time.monotonic()
        error = ""
        try:
            reply = getattr(self, f"_turn_{kind}")(prompt)
            if reply != f"Echo: {prompt}":
                raise Refused(f"unexpected reply {reply[:100]!r}")
        except (Refused, OSError, ValueError, websocket.WebSocketException) as exc:
            error = str(exc)[:300] or type(exc).__name__
        total = (time.monotonic() - started) * 1000
        PLAN.turns.append([kind, started, total, upstream, error])
        events.request.fire(  # type: ignore[no-untyped-call]
            request_type=kind,
            name="turn",
            response_time=max(0.0, total - upstream),
            response_length=0,
            exception=Refused(error) if error else None,
            context={},
        )

    def _chat_url(self) -> str:
        return f"{PLAN.url}/agents/{self.agent_id}/v1/agent/chat"

    def _turn_json(self, prompt: str) -> str:
        body = {"prompt": prompt, "session_id": self.session_id}
        answer = self.http.post(self._chat_url(), json=body, timeout=TURN_SECONDS)
        return _check(answer, 200, "chat")["content"]  # type: ignore[no-any-return]

    def _turn_sse(self, prompt: str) -> str:
        body: dict[str, Any] = {"prompt": prompt, "session_id": self.session_id, "stream": True}
        with self.http.post(self._chat_url(), json=body, stream=True, timeout=TURN_SECONDS) as r:
            if r.status_code != 200:
                raise Refused(f"chat (SSE): HTTP {r.status_code} {r.text[:200]}")
            event = ""
            for raw in r.iter_lines():
                line = raw.decode()
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event in ("done", "error", "cancelled"):
                    data = json.loads(line[5:])
                    if event != "done":
                        raise Refused(f"chat (SSE) {event}: {json.dumps(data)[:200]}")
                    return data["content"]  # type: ignore[no-any-return]
        raise Refused("chat (SSE): the stream ended without done")

    def _turn_ws(self, prompt: str) -> str:
        if self.socket is None:  # the last turn's socket dropped: the page reconnects
            self.socket = self._open_socket()
        frame = {"type": "send", "session_id": self.session_id, "content": prompt}
        try:
            self.socket.send(json.dumps(frame))
            done = self._read_until(self.socket, {"done", "cancelled"})
        except (OSError, websocket.WebSocketException):
            self.socket.close()
            self.socket = None
            raise
        if done["type"] != "done":
            raise Refused("chat (WebSocket): cancelled")
        return done["messages"][-1]["content"]  # type: ignore[no-any-return]


def run(plan_file: Path, results_file: Path) -> None:
    global PLAN
    data = json.loads(plan_file.read_text())
    PLAN = _Plan(data)
    ChatUser.wait_time = between(*PLAN.think)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = Environment(user_classes=[ChatUser], events=events, stop_timeout=TURN_SECONDS)
    runner = env.create_local_runner()
    started = time.monotonic()
    runner.start(data["user_count"], spawn_rate=data["spawn_rate"])
    gevent.spawn_later(data["seconds"], runner.quit)
    runner.greenlet.join()
    results_file.write_text(
        json.dumps(
            {
                "started": started,
                "ended": time.monotonic(),
                "turns": PLAN.turns,
                "spawns": PLAN.spawns,
                "setup_errors": PLAN.setup_errors,
                "reconnects": PLAN.reconnects,
                "cpu": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
            }
        )
    )


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]))
