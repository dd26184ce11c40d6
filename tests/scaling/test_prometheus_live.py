"""The autoscaler's Prometheus source, end to end and for real: a Prometheus server (Debian's
``prometheus`` binary) runs the ``agent-runtimes`` job of ``deploy/prometheus/prometheus.yml``,
discovers the agents at the console's ``/metrics/targets`` and scrapes each one's runtime through
the console with the metrics token; ``pools_observe`` then reads each pool's open sessions from
it. The console is served over ASGI, the agents boot as real ``python -m agents.runtime``
processes, and Claude is the fake Anthropic server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from agents.models import Agent
from scaling.metrics import PoolKey, pools_observe
from scaling.models import ScalingRule
from tests.polling import eventually
from tests.servers import free_port, serving

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a-metrics-token-for-prometheus"
PROMPT = "You answer support questions."


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or shutil.which(
        "prometheus", path=str(ROOT / ".venv" / "bin")
    )
    if found is None:
        pytest.skip(
            "no prometheus server binary: it comes with Debian's prometheus package "
            "(scripts/promtool.sh, run by make test, puts it in .venv/bin)"
        )
    return found


@pytest.fixture
def console(asgi_server, settings, fake_anthropic):
    settings.CONSOLE_BASE_URL = asgi_server
    settings.GATEWAY_URL = f"{asgi_server}/gateway"
    settings.METRICS_BEARER_TOKEN = TOKEN
    return asgi_server


@pytest.fixture
def prometheus_url(console, tmp_path) -> Iterator[str]:
    """A Prometheus on loopback running the shipped agent-runtimes job against ``console``,
    every second; its data in ``tmp_path``; stopped at teardown."""
    binary = prometheus_binary()
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "agent-runtimes"]
    token = tmp_path / "metrics-token"
    token.write_text(TOKEN)
    job["scrape_interval"] = job["scrape_timeout"] = "1s"
    job["authorization"]["credentials_file"] = str(token)
    (discovery,) = job["http_sd_configs"]
    discovery["url"] = discovery["url"].replace("http://127.0.0.1:8000", console)
    discovery["refresh_interval"] = "1s"
    discovery["authorization"]["credentials_file"] = str(token)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [job]}))
    port = free_port()
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with serving(command, log=tmp_path / "prometheus.log", url=url, health="/-/ready"):
        yield url


@pytest.fixture
def alice(user, api_key, console) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=console, timeout=30, headers={"Authorization": f"Bearer {api_key(user)}"}
    ) as client:
        yield client


def _spawn_with_sessions(client: httpx.Client, *, system_prompt: str, sessions: int) -> Agent:
    """A running agent whose runtime holds ``sessions`` sessions, one turn each."""
    response = client.post(
        "/v1/agents/spawn",
        json={"user_id": "alice", "memory": 256, "system_prompt": system_prompt},
    )
    assert response.status_code == 201, response.text
    spawned = response.json()
    agent = Agent.objects.get(pk=spawned["agent_id"])
    assert agent.status == "running", agent.last_error
    for n in range(sessions):
        turn = client.post(
            f"{spawned['url']}/v1/agent/chat", json={"prompt": f"hello {n}", "user_id": "alice"}
        )
        assert turn.status_code == 200, turn.text
    return agent


def test_prometheus_discovers_the_agents_and_the_autoscaler_reads_a_pools_sessions(
    alice, prometheus_url, user, tmp_path
):
    pooled = [
        _spawn_with_sessions(alice, system_prompt=PROMPT, sessions=3),
        _spawn_with_sessions(alice, system_prompt=PROMPT, sessions=2),
    ]
    elsewhere = _spawn_with_sessions(alice, system_prompt="Something else.", sessions=4)
    model = pooled[0].model
    ScalingRule.objects.create(name="support", owner=user, model=model, system_prompt=PROMPT)
    pools = {
        "support": PoolKey(user.pk, model, PROMPT),
        "unscaled": PoolKey(user.pk, model, "Something else."),
    }

    def scraped() -> list[dict]:
        return httpx.get(
            f"{prometheus_url}/api/v1/query", params={"query": "agent_active_sessions"}, timeout=5
        ).json()["data"]["result"]

    # Prometheus finds and scrapes each agent in its own time: wait for all three.
    everyone = {str(a.pk) for a in [*pooled, elsewhere]}
    seen: dict[str, object] = {}

    def everyone_read() -> tuple[dict, list[dict]] | None:
        seen["readings"] = readings = pools_observe(pools=pools, prometheus_url=prometheus_url)
        seen["series"] = series = scraped()
        if (
            readings["support"].sessions == 5
            and readings["support"].prometheus_agents == 2
            and {s["metric"]["agent_id"] for s in series} == everyone
        ):
            return readings, series
        return None

    def never_read() -> str:
        targets = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=5).json()
        log = (tmp_path / "prometheus.log").read_text()
        return (
            f"never read 5 sessions: {seen['readings']!r}\n{seen['series']!r}\n{targets!r}\n{log}"
        )

    readings, series = eventually(everyone_read, 60, every=0.5, failing=never_read)

    support = readings["support"]
    assert (support.source, support.error, support.agents) == ("prometheus", "", 2)
    # No rule names the other template: Prometheus scrapes its agent with no pool, so the
    # autoscaler finds no series for that pool, and says so rather than reading zero.
    assert readings["unscaled"].sessions is None
    assert "no agent_active_sessions series for pool 'unscaled'" in readings["unscaled"].error

    labels = {s["metric"]["agent_id"]: s["metric"] for s in series}
    values = {s["metric"]["agent_id"]: s["value"][1] for s in series}
    assert set(labels) == everyone
    assert "pool" not in labels[str(elsewhere.pk)]  # Prometheus drops a label left empty
    assert values == {str(pooled[0].pk): "3", str(pooled[1].pk): "2", str(elsewhere.pk): "4"}
    for agent in [*pooled, elsewhere]:
        assert labels[str(agent.pk)]["owner"] == "alice"
        assert labels[str(agent.pk)]["model"] == model
        assert labels[str(agent.pk)]["job"] == "agent-runtimes"
    # Only the sessions are kept of what the runtimes export.
    names = httpx.get(f"{prometheus_url}/api/v1/label/__name__/values", timeout=5).json()["data"]
    assert "agent_active_sessions" in names
    assert "agent_requests_total" not in names
