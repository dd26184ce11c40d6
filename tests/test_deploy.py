"""deploy/: the Prometheus alert rules, their unit tests, the scrape configuration and the
Grafana dashboard. Every metric they name must be one the console exports (read from its own
/metrics); promtool checks the rules, runs their tests and checks the configuration and every
panel's query, where it is installed (``scripts/promtool.sh`` fetches it; ``make test`` runs
that)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from django.conf import settings
from django.urls import reverse
from django.utils.module_loading import import_string
from prometheus_client.parser import text_string_to_metric_families

# What the web process loads (its ASGI app serves the gateway too, so the gateway's metrics are
# registered wherever /metrics is served), whatever other tests have loaded before these.
import config.asgi  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "agent-console.json"

REQUIRED_ALERTS = {
    "HighAgentErrorRate",
    "HighAgentLatency",
    "AgentSpawnFailures",
    "HighAgentSessionCount",
    "CriticalAgentCapacity",
    "LowAgentSuccessRate",
    "BudgetNearlySpent",
    "BudgetExhausted",
    "CostRateSpike",
}
# Each panel the dashboard must have, by a word of its title, and a metric its queries read.
REQUIRED_PANELS = {
    "active sessions": "agent_active_sessions",
    "request rate": "agent_requests_total",
    "latency": "agent_request_duration_seconds_bucket",
    "tokens": "agent_token_usage_total",
    "errors": "agent_errors_total",
    "spawn rate": "hypercore_agent_spawn_total",
    "spawn duration": "hypercore_agent_spawn_duration_seconds_bucket",
    "success rate": "agent_requests_total",
    "cost": "console_gateway_cost_usd_total",
    "budgets": "console_budget_remaining",
}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created", ""),
    "gauge": ("",),
}
# PromQL's words that look like metric names.
_PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "topk",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "clamp_min",
    "by",
    "on",
    "without",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
}


@pytest.fixture
def exported(client, db) -> set[str]:
    """Every sample name the console's /metrics can show, labelled series not yet seen included."""
    response = client.get("/metrics")
    assert response.status_code == 200
    names = set()
    for family in text_string_to_metric_families(response.content.decode()):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    words = set(re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return words - _PROMQL_WORDS


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_metrics_in_reads_a_query_as_prometheus_does():
    expr = (
        "histogram_quantile(0.95, sum by (le) (rate(agent_request_duration_seconds_bucket"
        '{endpoint!~"/metrics|/health"}[5m]))) > 2 and on (x) console_budget_limit offset 1h'
    )
    assert metrics_in(expr) == {"agent_request_duration_seconds_bucket", "console_budget_limit"}


def test_every_named_alert_is_there_with_a_duration_a_severity_and_a_summary():
    rules = alert_rules()

    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_alerts_read_only_metrics_the_console_exports(exported):
    for rule in alert_rules():
        used = metrics_in(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)


def test_the_dashboard_has_every_panel_and_reads_only_exported_metrics(exported):
    found = panels()
    for panel in found:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metrics_in(target["expr"])
            assert used, panel["title"]
            assert used <= exported, (panel["title"], used - exported)
    for word, metric in REQUIRED_PANELS.items():
        matching = [p for p in found if word in p["title"].lower()]
        assert matching, f"no panel about {word}"
        assert any(metric in t["expr"] for p in matching for t in p["targets"]), word
    ids = [panel["id"] for panel in found]
    assert len(ids) == len(set(ids))


def _promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path=str(ROOT / ".venv" / "bin"))
    if found is None:
        pytest.skip("promtool is not installed: scripts/promtool.sh fetches it (make test runs it)")
    return found


def _run(*args: str, cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_rules_and_their_tests_pass():
    promtool = _promtool()
    _run(promtool, "check", "rules", str(ALERTS), cwd=ALERTS.parent)
    _run(promtool, "test", "rules", "alerts_test.yml", cwd=ALERTS.parent)


def test_promtool_accepts_the_scrape_configuration(tmp_path):
    promtool = _promtool()
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    token = tmp_path / "token"
    token.write_text("a-metrics-token")
    for job in config["scrape_configs"]:
        for client in [job, *job.get("http_sd_configs", [])]:
            client["authorization"]["credentials_file"] = str(token)
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    _run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)


def test_the_agent_runtimes_job_discovers_the_agents_at_the_console_and_keeps_their_sessions():
    from scaling.metrics import AGENTS_QUERY, SESSIONS_QUERY

    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["agent-runtimes"]
    (discovery,) = job["http_sd_configs"]

    assert urlsplit(discovery["url"]).path == reverse("metrics-targets")
    for client in (job, discovery):  # the token, for the targets and for every scrape
        assert client["authorization"] == jobs["agent-console"]["authorization"]
    (keep,) = [r for r in job["metric_relabel_configs"] if r["action"] == "keep"]
    assert keep["source_labels"] == ["__name__"]
    for query in (SESSIONS_QUERY, AGENTS_QUERY):
        for metric in metrics_in(query):
            assert re.fullmatch(keep["regex"], metric), (query, metric)


def test_promtool_accepts_every_panels_query(tmp_path):
    promtool = _promtool()
    rules = [
        {"record": f"panel_{panel['id']}_{target['refId']}", "expr": target["expr"]}
        for panel in panels()
        for target in panel["targets"]
    ]
    (tmp_path / "panels.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]})
    )
    _run(promtool, "check", "rules", "panels.yml", cwd=tmp_path)


# --- Several machines: each is its own target (instance, machine, role). -------------------

_READ_ONCE = re.compile(r"max\s+(?:without|by)\s*\([^()]*\)\s*\(\s*$")


@pytest.fixture
def fleet_gauges(db) -> set[str]:
    """What every console machine's /metrics reads alike from the database: the collectors'."""
    return {
        family.name
        for path in settings.METRICS_COLLECTORS
        for family in import_string(path)().collect()
    }


def read_more_than_once(expr: str, gauges: set[str]) -> list[str]:
    """The fleet gauges ``expr`` reads other than as the argument of a ``max without (...)`` or
    ``max by (...)``, which would add each machine's copy or fail to match them one to one."""
    found = []
    for match in re.finditer(r"(?<![\w:])([a-zA-Z_:][\w:]*)(?![\w:])", expr):
        if match.group(1) in gauges and not _READ_ONCE.search(expr[: match.start()]):
            found.append(match.group(1))
    return found


def test_the_read_once_check_finds_a_gauge_summed_across_machines():
    gauges = {"hypercore_agent_active_count", "console_sandbox_used"}
    assert read_more_than_once("sum(hypercore_agent_active_count)", gauges) == [
        "hypercore_agent_active_count"
    ]
    assert read_more_than_once("console_sandbox_used / on (resource) x", gauges) == [
        "console_sandbox_used"
    ]
    assert read_more_than_once("sum(max by (status) (hypercore_agent_active_count))", gauges) == []


def test_the_alerts_and_panels_read_the_fleets_gauges_once_across_machines(fleet_gauges):
    assert {"hypercore_agent_active_count", "console_budget_remaining"} <= fleet_gauges
    for rule in alert_rules():
        assert read_more_than_once(rule["expr"], fleet_gauges) == [], rule["alert"]
    for panel in panels():
        for target in panel["targets"]:
            assert read_more_than_once(target["expr"], fleet_gauges) == [], panel["title"]


def test_the_console_job_discovers_its_machines_at_the_console():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["agent-console"]
    (discovery,) = job["http_sd_configs"]

    assert urlsplit(discovery["url"]).path == reverse("metrics-machines")
    assert discovery["authorization"] == job["authorization"]
    assert "static_configs" not in job


def _series(name: str, labels: str, values: str, machines: list[str]) -> list[dict]:
    return [
        {
            "series": f'{name}{{{labels}{"," if labels else ""}instance="{m}",machine="{m}"}}',
            "values": values,
        }
        for m in machines
    ]


def test_the_fleets_panels_read_two_machines_as_one_console(tmp_path):
    """The panels over two console machines and two sandbox hosts, as Prometheus evaluates
    them (promtool's unit tests): the fleet's gauges once, the hosts' counters added up."""
    promtool = _promtool()
    fronts, hosts = ["front-1", "front-2"], ["sb1", "sb2"]
    series = [
        *_series("hypercore_agent_active_count", 'status="running"', "5x10", fronts),
        *_series("hypercore_agent_active_count", 'status="booting"', "2x10", fronts),
        *_series("agent_active_sessions", "", "12x10", fronts),
        *_series("console_sandbox_capacity", 'resource="vcpus"', "16x10", fronts),
        *_series("console_sandbox_used", 'resource="vcpus"', "4x10", fronts),
        *_series("hypercore_agent_spawn_total", 'status="success"', "0+60x10", hosts),
    ]
    by_title = {panel["title"]: panel for panel in panels()}
    expected = {
        "Active agents": 7,
        "Active sessions": 12,
        "Sandbox capacity used": 0.25,
        "Spawn rate": 2.0,  # 60 a minute on each of two hosts: 2 a second
    }
    tests = []
    for title, value in expected.items():
        (target, *_) = by_title[title]["targets"]
        labels = {"resource": "vcpus"} if title == "Sandbox capacity used" else {}
        if title == "Spawn rate":
            labels = {"status": "success"}
        tests.append(
            {
                "expr": target["expr"],
                "eval_time": "5m",
                "exp_samples": [{"labels": _labels(labels), "value": value}],
            }
        )
    (tmp_path / "empty.yml").write_text("groups: []\n")
    (tmp_path / "panels_test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["empty.yml"],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
            }
        )
    )
    _run(promtool, "test", "rules", "panels_test.yml", cwd=tmp_path)


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
