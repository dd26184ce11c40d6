"""The console on three simulated machines (deploy/README.md's walk-through), reached through
nginx only.

Host ``front`` runs nginx (the site rendered from the deploy template, on front's address) in
front of two daphne web processes and two uvicorn gateways on front's loopback, and beat; hosts
``sb1`` and ``sb2`` each run a Celery worker, its relay and its agents' sandboxes. PostgreSQL and
Redis are the machine's, forwarded onto the bridge; the fake Anthropic listens on the bridge.
The sandboxes call Claude through nginx (``GATEWAY_URL``), whose certificate each sandbox host
trusts as an operator's machine would (its own ``/etc/ssl``, ``ip netns exec``'s per-namespace
``/etc``).

The steps share one fleet and run in order: spawns land on both hosts; a turn with each as
JSON and as events; a WebSocket turn; a turn stopped from the other web process; an agent's
logs and metrics; a delete. Then ``sb1`` loses power: its agents fail with the reason within
the heartbeat window, spawns go to ``sb2``, no surviving process answers 5xx, and the ledger
holds every call the fake answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from websockets.sync.client import connect

from tests.agents.workers import RELAY_KEY
from tests.conftest import PLATFORM_KEY, _redis_reachable
from tests.deploy.test_nginx import certificate, nginx_binary, nginx_conf
from tests.fakes.anthropic import FakeAnthropic, Text
from tests.multihost.network import Host, Network, netns_problem, network
from tests.polling import eventually

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    # Each step reads the database in a transaction of its own, rolled back: what the fleet's
    # processes commit is seen; the steps write nothing there themselves.
    pytest.mark.django_db,
    pytest.mark.timeout(180),
]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
WEB_PORTS, GATEWAY_PORTS, RELAY_PORT = (8001, 8002), (8101, 8102), 8090
HEARTBEAT, STALE = 1.0, 2.0  # seconds: SANDBOX_HOST_HEARTBEAT_SECONDS, SANDBOX_HOST_STALE_SECONDS
SECRET = "tests-only-multihost-0123456789abcdefghijklmnopqrstuvwxyz-0123456789"
PASSWORD = "multihost-alice-password-0123"
CREATE_KEY = ("create_api_key", "alice", "--create-user")
DAEMON_OFF = ("-g", "daemon off;")


def _worker_options(name: str) -> list[str]:
    return [
        "--concurrency",
        "2",
        "--hostname",
        f"{name}@%h",
        "--without-mingle",
        "--without-gossip",
    ]


@dataclass
class Fleet:
    net: Network
    url: str  # https://<front's address>
    ca: ssl.SSLContext
    key: str
    fake: FakeAnthropic
    logs: Path
    agents: dict[str, list[str]] = field(default_factory=dict)  # host name -> agent ids
    stopped: tuple[str, int] = ("", -1)  # the stopped turn's session, its call in fake.answered

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(
            base_url=self.url, verify=self.ca, timeout=30, headers=headers, **kwargs
        )

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _probe(host: Host, port: int) -> bool:
    code = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)"
    return host.run([PYTHON, "-c", code, str(port)]).returncode == 0


def _namespace_kill(host: Host) -> None:
    """Every process in ``host``'s namespace, as a machine that loses power: those started on
    it, and what they started in sessions of their own (the sandboxes)."""
    host.kill()
    listed = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True)
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def _trust(host: Host, cert: Path) -> Path:
    """``host``'s own /etc/ssl (``ip netns exec`` mounts /etc/netns/<namespace>/* over /etc):
    the machine's CA bundle and the test's certificate, as an operator installs a private CA."""
    folder = Path("/etc/netns") / host.namespace
    shutil.copytree("/etc/ssl", folder / "ssl", symlinks=True)
    bundle = folder / "ssl" / "certs" / "ca-certificates.crt"
    bundle.unlink(missing_ok=True)
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle.write_text((system.read_text() if system.exists() else "") + cert.read_text())
    return folder


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _reseed_prices() -> None:
    import importlib

    from django.apps import apps

    importlib.import_module("console.migrations.0009_price_cache_lifetimes_and_web_search").seed(
        apps, None
    )


def _clean_database() -> None:
    call_command("flush", interactive=False, verbosity=0)
    _reseed_prices()


@pytest.fixture(scope="module")
def fleet(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Fleet]:
    if problem := netns_problem():
        pytest.skip(problem)
    nginx = nginx_binary()
    # As tests/conftest.py's markers do, before them: this fixture comes first.
    problem = "" if connection.vendor == "postgresql" else "needs PostgreSQL: set DATABASE_URL"
    if problem := problem or _redis_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide this service: {problem}")
        pytest.skip(problem)
    logs = tmp_path_factory.mktemp("fleet")
    short = Path(tempfile.mkdtemp(prefix="acf-"))  # sandbox sockets need short paths
    redis_db = os.environ["REDIS_URL"].rstrip("/").rpartition("/")[2]
    db = connection.settings_dict
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, short, ignore_errors=True)
        stack.enter_context(django_db_blocker.unblock())
        _clean_database()
        stack.callback(_clean_database)
        net = stack.enter_context(
            network(["front", "sb1", "sb2"], services=[db["PORT"] or 5432, 6379], logs=logs)
        )
        for name in ("sb1", "sb2", "front"):  # before the network is removed
            stack.callback(_namespace_kill, net.hosts[name])
        front = net.hosts["front"]
        url = f"https://{front.address}"
        cert, cert_key = certificate(logs, front.address)
        if not Path("/etc/netns").exists():
            stack.callback(_remove_if_empty, Path("/etc/netns"))
        for name in ("sb1", "sb2"):
            stack.callback(shutil.rmtree, _trust(net.hosts[name], cert), ignore_errors=True)
        fake = FakeAnthropic(host=net.gateway).start()
        stack.callback(fake.stop)

        base = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "PYTEST_CURRENT_TEST", "CELERY_BROKER_URL"}
        } | {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": (
                f"postgres://{db['USER']}@{net.service(db['PORT'] or 5432)}/{db['NAME']}"
            ),
            "REDIS_URL": f"redis://{net.service(6379)}/{redis_db}",
            "SECRET_KEY": SECRET,
            "ALLOWED_HOSTS": front.address,
            "CONSOLE_BASE_URL": url,
            "CSRF_TRUSTED_ORIGINS": url,
            "TRUSTED_PROXIES": "1",
            "USE_X_FORWARDED_PROTO": "true",
            "SECURE_SSL_REDIRECT": "true",
            "SESSION_COOKIE_SECURE": "true",
            "CSRF_COOKIE_SECURE": "true",
            "GATEWAY_URL": f"{url}/gateway",
            "SANDBOX_RELAY_KEY": RELAY_KEY,
            "SANDBOX_HOST_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "SANDBOX_HOST_STALE_SECONDS": str(STALE),
            # A beat killed by the run before holds the schedule's lock in Redis this long.
            "BEAT_LOCK_SECONDS": "5",
            "CELERY_TASK_ALWAYS_EAGER": "false",
        }
        metrics = logs / "front-metrics"
        metrics.mkdir()
        front_env = base | {
            "CONSOLE_VAR_DIR": str(logs / "front-var"),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            "WHITENOISE_USE_FINDERS": "true",
            "ANTHROPIC_API_KEY": PLATFORM_KEY,
            "ANTHROPIC_BASE_URL": fake.base_url,
            "ANTHROPIC_MAX_RETRIES": "0",
        }

        # The user and their key, made by the command an operator runs on the console machine.
        created = subprocess.run(
            ["ip", "netns", "exec", front.namespace, PYTHON, "manage.py", *CREATE_KEY],
            cwd=ROOT,
            env=front_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        key = re.search(r"\bac_\S+", created.stdout).group(0)
        from django.contrib.auth import get_user_model

        alice = get_user_model().objects.get(username="alice")
        alice.set_password(PASSWORD)
        alice.save()
        # The steps poll: no request rate limit (not what is tested here) for alice.
        from console.models import Quota

        assert Quota.objects.filter(user=alice).update(requests_per_minute=None) == 1

        for port in WEB_PORTS:  # as agent-console-web@.service runs them
            argv = [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
            front.popen(
                [*argv, "config.asgi:application"], env=front_env, log=logs / f"web-{port}.log"
            )
        from config.launch import gateway_command

        for port in GATEWAY_PORTS:
            front.popen(
                [PYTHON, *gateway_command("127.0.0.1", port)],
                env=front_env,
                log=logs / f"gateway-{port}.log",
            )
        celery = [PYTHON, "-m", "celery", "-A", "config"]
        beat = front.popen(
            [*celery, "beat", "--loglevel", "INFO"], env=front_env, log=logs / "beat.log"
        )
        stack.callback(_stop, beat)  # first: it gives the schedule's lock back
        prefix = logs / "nginx"
        prefix.mkdir()
        render = subprocess.run(
            [PYTHON, str(ROOT / "deploy" / "nginx" / "render.py")]
            + ["--server-name", front.address, "--listen", front.address]
            + [arg for port in WEB_PORTS for arg in ("--web", f"127.0.0.1:{port}")]
            + [arg for port in GATEWAY_PORTS for arg in ("--gateway", f"127.0.0.1:{port}")]
            + ["--certificate", str(cert), "--certificate-key", str(cert_key)],
            capture_output=True,
            text=True,
            check=True,
        )
        conf = nginx_conf(prefix, render.stdout)
        files = ["-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
        front.popen([nginx, *files, *DAEMON_OFF], env=front_env, log=logs / "nginx.log")

        for name in ("sb1", "sb2"):
            host = net.hosts[name]
            host_tmp = short / name
            host_tmp.mkdir()
            env = base | {
                "CONSOLE_VAR_DIR": str(logs / f"{name}-var"),
                "SANDBOX_HOST_NAME": name,
                "SANDBOX_HOST_VCPUS": "8",
                "SANDBOX_STATE_DIR": str(host_tmp / "sandboxes"),
                "SANDBOX_RELAY_LISTEN": f"{host.address}:{RELAY_PORT}",
                "SANDBOX_RELAY_URL": f"http://{host.address}:{RELAY_PORT}",
                "TMPDIR": str(host_tmp),
            }
            worker = [*celery, "worker", "--loglevel", "INFO", *_worker_options(name)]
            host.popen(worker, env=env, log=logs / f"worker-{name}.log")
            host.popen(
                [PYTHON, "manage.py", "sandbox_relay"], env=env, log=logs / f"relay-{name}.log"
            )

        fleet = Fleet(net, url, ssl.create_default_context(cafile=str(cert)), key, fake, logs)

        def tails() -> str:
            names = ["nginx", "beat", "worker-sb1", "worker-sb2", "relay-sb1", "relay-sb2"]
            names += [f"web-{p}" for p in WEB_PORTS] + [f"gateway-{p}" for p in GATEWAY_PORTS]
            return "\n".join(f"--- {n} ---\n{fleet.log(n)[-2000:]}" for n in names)

        for port in (*WEB_PORTS, *GATEWAY_PORTS):
            eventually(lambda p=port: _probe(front, p), 60, every=0.3, failing=tails)
        eventually(lambda: _ready(fleet), 30, every=0.3, failing=tails)
        from agents.models import SandboxHost

        def hosts_online() -> bool:
            online = SandboxHost.objects.filter(is_online=True).values_list("name", flat=True)
            return set(online) == {"sb1", "sb2"}

        eventually(hosts_online, 60, every=0.3, failing=tails)
        # Beat holds the schedule's lock and sends (hosts_mark_stale among its tasks). A beat
        # of another test on this Redis, killed, may hold it up to its BEAT_LOCK_SECONDS (25).
        eventually(lambda: "Sending due task" in fleet.log("beat"), 45, every=0.3, failing=tails)
        for name in ("sb1", "sb2"):
            host = net.hosts[name]
            eventually(lambda h=host: _probe_address(h), 30, every=0.3, failing=tails)
        yield fleet


def _probe_address(host: Host) -> bool:
    code = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"
    return host.run([PYTHON, "-c", code, host.address, str(RELAY_PORT)]).returncode == 0


def _ready(fleet: Fleet) -> bool:
    try:
        with httpx.Client(base_url=fleet.url, verify=fleet.ca, timeout=5) as client:
            return all(client.get("/ready").status_code == 200 for _ in range(4))
    except httpx.HTTPError:
        return False


def _spawn(client: httpx.Client, name: str) -> tuple[str, str]:
    """Spawn an agent through nginx; its id and the host it landed on, once it runs."""
    from agents.models import Agent

    answer = client.post("/api/v1/agents", json={"name": name, "memory": 256})
    assert answer.status_code == 201, answer.text
    agent_id = answer.json()["agent_id"]

    def running() -> str:
        status = client.get(f"/api/v1/agents/{agent_id}").json()["status"]
        return status if status in {"running", "failed"} else ""

    status = eventually(running, 60, every=0.2)
    agent = Agent.objects.select_related("host").get(pk=agent_id)
    assert status == "running", agent.last_error
    return agent_id, agent.host.name


def test_spawns_land_on_both_sandbox_hosts(fleet):
    with fleet.client() as client:
        for number in range(4):
            agent_id, host = _spawn(client, f"spawned-{number}")
            fleet.agents.setdefault(host, []).append(agent_id)
            if {"sb1", "sb2"} <= fleet.agents.keys():
                break
    assert {"sb1", "sb2"} <= fleet.agents.keys(), fleet.agents


def _events(answer: httpx.Response) -> list[tuple[str, dict]]:
    found, name = [], ""
    for line in answer.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            found.append((name, json.loads(line[5:])))
    return found


def test_a_turn_with_each_agent_as_json_and_as_events(fleet):
    with fleet.client() as client:
        for host in ("sb1", "sb2"):
            agent_id = fleet.agents[host][0]
            chat = f"/agents/{agent_id}/v1/agent/chat"
            answer = client.post(chat, json={"prompt": f"Hello {host}"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["content"] == f"Echo: Hello {host}"
            body = {"prompt": f"Stream from {host}", "stream": True}
            with client.stream("POST", chat, json=body) as streamed:
                assert streamed.status_code == 200
                assert streamed.headers["content-type"].startswith("text/event-stream")
                events = _events(streamed)
            assert events[-1][0] == "done", events
            assert events[-1][1]["content"] == f"Echo: Stream from {host}"


def _sign_in(fleet: Fleet) -> str:
    """alice's session cookie, from the sign-in page through nginx."""
    with httpx.Client(base_url=fleet.url, verify=fleet.ca, timeout=30) as browser:
        browser.get("/accounts/login/")
        answer = browser.post(
            "/accounts/login/",
            data={
                "username": "alice",
                "password": PASSWORD,
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers={"Referer": f"{fleet.url}/accounts/login/"},
        )
        assert answer.status_code == 302, answer.text[:500]
        return browser.cookies["sessionid"]


def _session(client: httpx.Client, agent_id: str) -> str:
    answer = client.post("/api/v1/sessions", json={"agent_id": agent_id})
    assert answer.status_code == 201, answer.text
    return answer.json()["session_id"]


def test_a_websocket_turn_with_each_agent(fleet):
    cookie = _sign_in(fleet)
    wss = fleet.url.replace("https://", "wss://") + "/ws/chat/"
    headers = {"Cookie": f"sessionid={cookie}", "Origin": fleet.url}
    with fleet.client() as client:
        sessions = {host: _session(client, fleet.agents[host][0]) for host in ("sb1", "sb2")}
    for host, sid in sessions.items():
        with connect(wss, ssl=fleet.ca, additional_headers=headers, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
            ws.send(json.dumps({"type": "open", "session_id": sid}))
            content = f"Socket to {host}"
            ws.send(json.dumps({"type": "send", "session_id": sid, "content": content}))
            events: list[dict] = []
            while not events or events[-1]["type"] not in {"done", "error", "cancelled"}:
                events.append(json.loads(ws.recv(timeout=30)))
        assert events[-1]["type"] == "done", events[-1]
        text = "".join(e["text"] for e in events if e["type"] == "delta")
        assert text == f"Echo: {content}"


def test_a_turn_is_stopped_from_the_other_web_process(fleet):
    """nginx sends the web upstream's requests to its two servers in turn (one worker, equal
    weights, no other client): the cancel that follows the turn's request reaches the other
    process, which stops the turn through Redis. The processes' access logs show it."""
    words = " ".join(f"w{n}" for n in range(40))
    fleet.fake.chunk_delay = 0.2
    calls_before = len(fleet.fake.answered)
    fleet.fake.enqueue(Text(words))
    try:
        with fleet.client() as client:
            sid = _session(client, fleet.agents["sb2"][0])
            body = {"content": "Take your time", "stream": True}
            name, seen = "", []
            with client.stream("POST", f"/api/v1/sessions/{sid}/messages", json=body) as turn:
                assert turn.status_code == 200
                for line in turn.iter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                        seen.append(name)
                        if name == "delta" and seen.count("delta") == 1:
                            cancel = client.post(f"/api/v1/sessions/{sid}/cancel")
                            assert cancel.status_code == 202, cancel.text
    finally:
        fleet.fake.chunk_delay = 0.0
    assert seen[-1] == "cancelled", seen
    assert eventually(lambda: len(fleet.fake.answered) == calls_before + 1, 10)
    fleet.stopped = (sid, calls_before)
    assert seen.count("delta") < len(words.split())
    turn_at = [
        p for p in WEB_PORTS if f'"POST /api/v1/sessions/{sid}/messages"' in fleet.log(f"web-{p}")
    ]
    cancel_at = [
        p for p in WEB_PORTS if f'"POST /api/v1/sessions/{sid}/cancel"' in fleet.log(f"web-{p}")
    ]
    assert len(turn_at) == 1 and len(cancel_at) == 1 and turn_at != cancel_at, (turn_at, cancel_at)


def test_an_agents_logs_and_metrics(fleet):
    with fleet.client() as client:
        for host in ("sb1", "sb2"):
            agent_id = fleet.agents[host][0]
            logs = client.get(f"/api/v1/agents/{agent_id}/logs", params={"lines": 50})
            assert logs.status_code == 200, logs.text
            assert "/v1/agent/chat" in logs.json()["log"], logs.json()
            metrics = client.get(f"/agents/{agent_id}/metrics")
            assert metrics.status_code == 200, metrics.text
            assert "# TYPE" in metrics.text


def test_an_agent_is_deleted(fleet):
    from agents.models import Agent

    with fleet.client() as client:
        agent_id, _ = _spawn(client, "short-lived")
        answer = client.delete(f"/api/v1/agents/{agent_id}")
        assert answer.status_code == 200, answer.text
        assert client.get(f"/api/v1/agents/{agent_id}").status_code == 404
    assert Agent.objects.get(pk=agent_id).deleted_at is not None


class _Watch:
    """Requests through nginx, one after another on a thread, each status recorded: the
    surviving processes' answers while a host dies and after."""

    def __init__(self, fleet: Fleet, agent_id: str) -> None:
        self.fleet, self.agent_id = fleet, agent_id
        self.answers: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        paths = ["/health", "/api/v1/agents", f"/api/v1/agents/{self.agent_id}"]
        with self.fleet.client() as client:
            while not self._stop.is_set():
                for path in paths:
                    self.answers.append((path, client.get(path).status_code))
                time.sleep(0.1)


def test_a_host_that_dies_loses_its_agents_and_no_more(fleet):
    from agents.models import Agent

    sb1, sb2 = fleet.net.hosts["sb1"], fleet.agents["sb2"][0]
    lost = fleet.agents["sb1"]
    with _Watch(fleet, sb2) as watch, fleet.client() as client:
        died = time.monotonic()
        _namespace_kill(sb1)

        def all_failed() -> bool:
            states = [client.get(f"/api/v1/agents/{a}").json() for a in lost]
            return all(s["status"] == "failed" for s in states) and states

        window = STALE + 3 * HEARTBEAT + 2  # missed heartbeats, beat's next check, its queue
        states = eventually(all_failed, window, every=0.1)
        assert states, [Agent.objects.get(pk=a).status for a in lost]
        took = time.monotonic() - died
        for state in states:
            assert state["last_error"].startswith("host sb1 stopped answering"), state
        for number in range(3):
            _, host = _spawn(client, f"after-{number}")
            assert host == "sb2"
        answer = client.post(f"/agents/{sb2}/v1/agent/chat", json={"prompt": "Still here"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["content"] == "Echo: Still here"
        time.sleep(1)
    assert took <= window
    assert len(watch.answers) > 20
    failed = [(path, code) for path, code in watch.answers if code >= 500]
    assert not failed, failed


def test_the_ledger_holds_every_call_the_fake_answered(fleet):
    """Every call is in the ledger with the tokens the fake answered. The stopped turn's call
    is cut mid-stream: the fake counts the output of what it wrote before the cut, the gateway
    of what it read, and the cut falls between chunks at a different point for each (seen both
    ways, a chunk either side): its input is exact, its output within a chunk of the fake's."""
    from django.db.models import Sum

    from console.models import UsageRecord

    sid, index = fleet.stopped
    assert sid, "the stopped turn's step did not run"

    def totals() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        answered = [u for n, u in enumerate(fleet.fake.answered) if n != index]
        fake = (
            len(answered),
            sum(u["input_tokens"] for u in answered),
            sum(u["output_tokens"] for u in answered),
        )
        rows = UsageRecord.objects.exclude(session_id=sid)
        summed = rows.aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"))
        return fake, (rows.count(), summed["i"] or 0, summed["o"] or 0)

    eventually(lambda: (t := totals())[0] == t[1], 15, every=0.2)
    fake, ledger = totals()
    # The turns above: two as JSON, two streamed, two over sockets, the last one.
    assert fake[0] >= 7
    assert ledger == fake
    cut = fleet.fake.answered[index]
    [row] = UsageRecord.objects.filter(session_id=sid)
    assert row.input_tokens == cut["input_tokens"]
    # One word a chunk, one token a word: the two counts are at most a chunk apart.
    assert row.output_tokens > 0
    assert abs(row.output_tokens - cut["output_tokens"]) <= 1, (row.output_tokens, cut)


def test_the_sandboxes_called_claude_through_nginx_only(fleet):
    """Every call the fake had came through nginx's /gateway/, from the sandbox hosts' own
    addresses; everything else nginx served came from the test's client."""
    lines = (fleet.logs / "nginx" / "access.log").read_text().splitlines()
    calls = [line.split()[0] for line in lines if '"POST /gateway/v1/messages ' in line]
    sandbox_hosts = {fleet.net.hosts[name].address for name in ("sb1", "sb2")}
    assert set(calls) == sandbox_hosts
    assert len(calls) == len(fleet.fake.requests)
    others = {line.split()[0] for line in lines if "/gateway/" not in line}
    assert others == {fleet.net.gateway}
