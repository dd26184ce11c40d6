"""The console on three simulated machines (``tests/multihost/fleet.py``), reached through
nginx only: two web processes and two gateways on ``front``, hosts ``sb1`` and ``sb2``.

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
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from django.core.management import call_command
from django.db import connection
from websockets.sync.client import connect

from tests.conftest import _redis_reachable
from tests.deploy.test_nginx import nginx_binary
from tests.fakes.anthropic import Text
from tests.multihost.fleet import METRICS_TOKEN, Fleet, namespace_kill, running_fleet
from tests.multihost.network import netns_problem
from tests.polling import eventually
from tests.scaling.test_prometheus_live import prometheus_binary

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    # Each step reads the database in a transaction of its own, rolled back: what the fleet's
    # processes commit is seen; the steps write nothing there themselves.
    pytest.mark.django_db,
    pytest.mark.timeout(180),
]

HEARTBEAT, STALE = 1.0, 2.0  # seconds: SANDBOX_HOST_HEARTBEAT_SECONDS, SANDBOX_HOST_STALE_SECONDS
PASSWORD = "multihost-alice-password-0123"
ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_PORT = 9090


@dataclass
class Steps(Fleet):
    """The fleet, and what a step leaves for a later one."""

    stopped: tuple[str, int] = ("", -1)  # the stopped turn's session, its call in fake.answered


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
def fleet(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Steps]:
    if problem := netns_problem():
        pytest.skip(problem)
    nginx = nginx_binary()
    # As tests/conftest.py's markers do, before them: this fixture comes first.
    problem = "" if connection.vendor == "postgresql" else "needs PostgreSQL: set DATABASE_URL"
    if problem := problem or _redis_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide this service: {problem}")
        pytest.skip(problem)
    db = connection.settings_dict
    settings = {
        "SANDBOX_HOST_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "SANDBOX_HOST_STALE_SECONDS": str(STALE),
        # A beat killed by the run before holds the schedule's lock in Redis this long.
        "BEAT_LOCK_SECONDS": "5",
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(django_db_blocker.unblock())
        _clean_database()
        stack.callback(_clean_database)
        running = stack.enter_context(
            running_fleet(
                logs=tmp_path_factory.mktemp("fleet"),
                nginx=nginx,
                database_url=f"postgres://{db['USER']}@127.0.0.1:{db['PORT'] or 5432}/{db['NAME']}",
                redis_url=os.environ["REDIS_URL"],
                settings=settings,
            )
        )
        from django.contrib.auth import get_user_model

        alice = get_user_model().objects.get(username="alice")
        alice.set_password(PASSWORD)
        alice.save()
        # The steps poll: no request rate limit (not what is tested here) for alice.
        from console.models import Quota

        assert Quota.objects.filter(user=alice).update(requests_per_minute=None) == 1
        # Beat holds the schedule's lock and sends (hosts_mark_stale among its tasks). A beat
        # of another test on this Redis, killed, may hold it up to its BEAT_LOCK_SECONDS (25).
        eventually(
            lambda: "Sending due task" in running.log("beat"), 45, every=0.3, failing=running.tails
        )
        yield Steps(**vars(running))


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


def _sign_in(fleet: Steps) -> str:
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
    logs = {port: fleet.log(f"web-{port}") for port in fleet.web_ports}
    turn_at = [p for p, log in logs.items() if f'"POST /api/v1/sessions/{sid}/messages"' in log]
    cancel_at = [p for p, log in logs.items() if f'"POST /api/v1/sessions/{sid}/cancel"' in log]
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


def _prometheus_config(fleet: Steps, folder: Path) -> Path:
    """deploy/prometheus/prometheus.yml as an operator sets it for this fleet: both discoveries
    at the console through nginx, its certificate trusted, the metrics token, the alert rules;
    every second rather than every 15."""
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    token = folder / "metrics-token"
    token.write_text(METRICS_TOKEN)
    tls = {"ca_file": str(fleet.nginx.cert)}
    for job in shipped["scrape_configs"]:
        job["scrape_interval"] = job["scrape_timeout"] = "1s"
        job["authorization"]["credentials_file"] = str(token)
        job["tls_config"] = tls
        for discovery in job["http_sd_configs"]:
            discovery["url"] = discovery["url"].replace("http://127.0.0.1:8000", fleet.url)
            discovery["refresh_interval"] = "1s"
            discovery["authorization"]["credentials_file"] = str(token)
            discovery["tls_config"] = tls
    shipped["global"]["evaluation_interval"] = "1s"
    shipped["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "alerts.yml")]
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(shipped))
    return config


class _Prometheus:
    """The HTTP API of a Prometheus server."""

    def __init__(self, url: str) -> None:
        self.api = httpx.Client(base_url=url, timeout=10)

    def ready(self) -> bool:
        try:
            return self.api.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[dict]:
        answer = self.api.get("/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def targets_up(self, job: str) -> list[dict[str, str]]:
        """The labels of the job's targets last scraped without an error."""
        try:
            targets = self.api.get("/api/v1/targets").json()["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError, KeyError):
            return []
        return [t["labels"] for t in targets if t["health"] == "up" and t["labels"]["job"] == job]

    def rules_evaluated(self) -> list[dict] | None:
        """Every rule, once each has been evaluated; else None."""
        groups = self.api.get("/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = rules and all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else None


def _prometheus_sees(prometheus: _Prometheus) -> dict[str, object]:
    """What Prometheus has found and added up: the machines (by role), agents and boots."""
    spawns = 'sum by (machine) (hypercore_agent_spawn_total{status="success"})'
    return {
        "machines": {t["machine"]: t["role"] for t in prometheus.targets_up("agent-console")},
        "agents": {t["agent_id"] for t in prometheus.targets_up("agent-runtimes")},
        "spawns": {s["metric"]["machine"]: float(s["value"][1]) for s in prometheus.query(spawns)},
    }


def _fleet_as_recorded() -> dict[str, object]:
    """What Prometheus should find, from the database: front (this machine's host name, which
    its namespace shares) and both sandbox hosts; the running agents; each host's boots."""
    from agents.models import Agent

    running = Agent.objects.filter(status="running", deleted_at__isnull=True)
    return {
        "machines": {socket.gethostname(): "console", "sb1": "sandbox-host", "sb2": "sandbox-host"},
        "agents": {str(pk) for pk in running.values_list("pk", flat=True)},
        "spawns": {h: float(Agent.objects.filter(host__name=h).count()) for h in ("sb1", "sb2")},
    }


def server_log(folder: Path) -> str:
    path = folder / "prometheus.log"
    return path.read_text(errors="replace") if path.exists() else "(no log)"


def test_prometheus_finds_every_machine_and_agent_and_adds_the_machines_up(fleet, tmp_path):
    """The real Prometheus, on front, with the shipped configuration: it discovers front and
    both sandbox hosts (each one target, its processes summed) and every running agent, adds
    the hosts' boot counters, reads the fleet's gauges once, and evaluates every alert rule
    and every panel of the dashboard without an error."""
    from agents.models import Agent

    front = fleet.net.hosts["front"]
    command = [
        prometheus_binary(),
        f"--config.file={_prometheus_config(fleet, tmp_path)}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={front.address}:{PROMETHEUS_PORT}",
        "--log.level=warn",
    ]
    server = front.popen(command, env=dict(os.environ), log=tmp_path / "prometheus.log")
    prometheus = _Prometheus(f"http://{front.address}:{PROMETHEUS_PORT}")
    try:
        eventually(prometheus.ready, 30, every=0.2, failing=lambda: server_log(tmp_path))
        expected = _fleet_as_recorded()
        last: list[dict[str, object]] = [{}]

        def found() -> bool:
            last[0] = _prometheus_sees(prometheus)
            return last[0] == expected

        def why() -> str:
            return f"Prometheus saw {last[0]!r}\nnot {expected!r}\n{server_log(tmp_path)}"

        eventually(found, 90, every=1, failing=why)
        # The fleet's gauges, which front reads from the database, once.
        (active,) = prometheus.query("sum(max by (status) (hypercore_agent_active_count))")
        live = Agent.objects.filter(status__in=Agent.ACTIVE_STATUSES, deleted_at__isnull=True)
        assert float(active["value"][1]) == live.count()
        for rule in eventually(prometheus.rules_evaluated, 30, every=0.5):
            assert rule["health"] == "ok", rule
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "agent-console.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                prometheus.query(target["expr"])
    finally:
        prometheus.api.close()
        server.terminate()
        server.wait(10)


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

    def __init__(self, fleet: Steps, agent_id: str) -> None:
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
        namespace_kill(sb1)

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
    addresses; everything else nginx served came from the test's client, but the metrics that
    Prometheus, on front, discovered and scraped."""
    lines = (fleet.logs / "nginx" / "access.log").read_text().splitlines()
    calls = [line.split()[0] for line in lines if '"POST /gateway/v1/messages ' in line]
    sandbox_hosts = {fleet.net.hosts[name].address for name in ("sb1", "sb2")}
    assert set(calls) == sandbox_hosts
    assert len(calls) == len(fleet.fake.requests)
    others = [line.split() for line in lines if "/gateway/" not in line]
    assert {words[0] for words in others} == {fleet.net.gateway, fleet.net.hosts["front"].address}
    scraped = {words[6] for words in others if words[0] == fleet.net.hosts["front"].address}
    metrics = re.compile(r"/metrics(/machines|/targets)?|/agents/[0-9a-f-]{36}/metrics")
    assert scraped and all(metrics.fullmatch(path) for path in scraped), scraped
