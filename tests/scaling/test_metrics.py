"""What the autoscaler observes of a pool: agents by status and open sessions from the
database, or sessions from Prometheus (a real HTTP server on loopback speaking its query API);
a failed read marks the observation failed, with the error."""

from __future__ import annotations

import pytest
from django.utils import timezone

from agents.models import Agent, Session
from scaling.metrics import (
    AGENTS_QUERY,
    SESSIONS_QUERY,
    PoolKey,
    PrometheusError,
    pools_observe,
    prometheus_query,
)
from tests.scaling import prometheus

pytestmark = pytest.mark.django_db

MODEL, PROMPT = "claude-sonnet-4-5", "You answer support questions."
_S = Agent.Status


@pytest.fixture
def fake_prometheus():
    with prometheus.serve() as fake:
        yield fake


def agents(owner, n: int, *, status=_S.RUNNING, prompt=PROMPT, model=MODEL, **fields):
    return [
        Agent.objects.create(
            owner=owner, model=model, system_prompt=prompt, status=status, **fields
        )
        for _ in range(n)
    ]


def sessions(agent, user, n: int, *, closed: bool = False):
    closed_at = timezone.now() if closed else None
    for _ in range(n):
        Session.objects.create(agent=agent, user=user, closed_at=closed_at)


def test_the_database_counts_a_pools_agents_by_status_and_its_open_sessions(user, outsider):
    running = agents(user, 3)
    agents(user, 1, status=_S.PENDING)
    agents(user, 1, status=_S.STARTING)
    draining = agents(user, 2, draining_since=timezone.now())
    # Not the pool's: stopped, deleted, another template, another owner.
    agents(user, 1, status=_S.STOPPED)
    agents(user, 1, deleted_at=timezone.now())
    other_template = agents(user, 1, prompt="Something else.")
    agents(outsider, 2)
    sessions(running[0], user, 5)
    sessions(running[1], user, 2)
    sessions(running[1], user, 4, closed=True)
    sessions(draining[0], user, 3)
    sessions(other_template[0], user, 9)

    reading = pools_observe(pools={"support": PoolKey(user.pk, MODEL, PROMPT)}, prometheus_url="")[
        "support"
    ]

    assert reading.agents == 5
    assert reading.by_status == {"running": 3, "pending": 1, "starting": 1}
    assert reading.draining == 2
    assert reading.sessions == 10  # the draining agent's sessions are load too
    assert reading.source == "database"
    assert not reading.error


def test_paused_agents_are_neither_capacity_nor_load_of_their_pool(user):
    running = agents(user, 1)
    paused = agents(user, 1, status=_S.PAUSED) + agents(user, 1, status=_S.PAUSING)
    sessions(running[0], user, 2)
    sessions(paused[0], user, 3)  # they come back with their agent, when a turn resumes it

    reading = pools_observe(pools={"p": PoolKey(user.pk, MODEL, PROMPT)}, prometheus_url="")["p"]

    assert (reading.agents, reading.sessions, reading.by_status) == (1, 2, {"running": 1})


def test_many_pools_are_read_in_two_queries(user, django_assert_num_queries):
    pools = {}
    for n in range(20):
        prompt = f"template {n}"
        agent = agents(user, 2, prompt=prompt)[0]
        sessions(agent, user, n)
        pools[f"pool-{n}"] = PoolKey(user.pk, MODEL, prompt)

    with django_assert_num_queries(2):
        readings = pools_observe(pools=pools, prometheus_url="")

    assert [readings[f"pool-{n}"].sessions for n in range(20)] == list(range(20))
    assert {r.agents for r in readings.values()} == {2}


def test_an_empty_pool_reads_zero(user):
    reading = pools_observe(pools={"p": PoolKey(user.pk, MODEL, PROMPT)}, prometheus_url="")["p"]

    assert (reading.agents, reading.sessions, reading.by_status) == (0, 0, {})


def test_prometheus_gives_the_sessions_by_pool_and_the_database_the_agents(
    user, fake_prometheus, settings
):
    agents(user, 4)
    agents(user, 3, prompt="other")
    fake_prometheus.series = {
        SESSIONS_QUERY: {"support": 250, "other": 12, "unrelated": 5},
        AGENTS_QUERY: {"support": 4},
    }
    settings.PROMETHEUS_URL = fake_prometheus.url
    pools = {"support": PoolKey(user.pk, MODEL, PROMPT), "other": PoolKey(user.pk, MODEL, "other")}

    readings = pools_observe(pools=pools)

    assert (readings["support"].sessions, readings["support"].agents) == (250, 4)
    assert readings["support"].prometheus_agents == 4
    assert readings["support"].source == "prometheus"
    assert (readings["other"].sessions, readings["other"].agents) == (12, 3)
    assert readings["other"].prometheus_agents is None
    assert fake_prometheus.queries == [SESSIONS_QUERY, AGENTS_QUERY]  # once for every pool


def test_a_pool_with_agents_but_no_series_in_prometheus_fails(user, fake_prometheus):
    agents(user, 2)
    agents(user, 0, prompt="empty")
    fake_prometheus.series = {SESSIONS_QUERY: {}, AGENTS_QUERY: {}}
    pools = {"support": PoolKey(user.pk, MODEL, PROMPT), "empty": PoolKey(user.pk, MODEL, "empty")}

    readings = pools_observe(pools=pools, prometheus_url=fake_prometheus.url)

    assert readings["support"].sessions is None
    assert "no agent_active_sessions series for pool 'support'" in readings["support"].error
    assert (readings["empty"].sessions, readings["empty"].error) == (0, "")


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (503, None, "Prometheus answered 503: query failed"),
        (
            200,
            b"<html>a proxy's page</html>",
            "Prometheus answered 200 with a body that is not JSON",
        ),
        (
            200,
            b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
            "Prometheus answered a matrix, not a vector",
        ),
        (
            200,
            b'{"status": "success", "data": {"resultType": "vector", '
            b'"result": [{"metric": {"pool": "support"}, "value": [1, "NaN"]}]}}',
            "Prometheus answered nan for pool 'support'",
        ),
        (
            200,
            b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}',
            "Prometheus answered a malformed sample",
        ),
    ],
)
def test_a_failed_prometheus_read_marks_every_pool_failed_with_the_error(
    user, fake_prometheus, status, body, message
):
    agents(user, 2)
    fake_prometheus.status, fake_prometheus.body = status, body

    reading = pools_observe(
        pools={"support": PoolKey(user.pk, MODEL, PROMPT)}, prometheus_url=fake_prometheus.url
    )["support"]

    assert reading.sessions is None
    assert message in reading.error
    assert reading.agents == 2  # the database's count stands


def test_an_unreachable_prometheus_is_an_error_not_a_crash(user):
    agents(user, 1)
    reading = pools_observe(
        pools={"support": PoolKey(user.pk, MODEL, PROMPT)}, prometheus_url="http://127.0.0.1:9"
    )["support"]

    assert reading.sessions is None
    assert "could not be reached" in reading.error


def test_a_slow_prometheus_times_out(fake_prometheus):
    fake_prometheus.series = {SESSIONS_QUERY: {"a": 1}}
    fake_prometheus.delay = 0.5

    with pytest.raises(PrometheusError, match="could not be reached"):
        prometheus_query(url=fake_prometheus.url, query=SESSIONS_QUERY, timeout=0.1)


def test_series_without_a_pool_label_sum_under_the_empty_name(fake_prometheus):
    fake_prometheus.series = {AGENTS_QUERY: {"": 7, "a": 2.0}}

    assert prometheus_query(url=fake_prometheus.url, query=AGENTS_QUERY, timeout=2) == {
        "": 7.0,
        "a": 2.0,
    }
