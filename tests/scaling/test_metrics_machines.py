"""How Prometheus finds the console's own machines: each web, gateway and relay process says it
is alive (``agents.services.processes``), and ``/metrics/machines`` lists each machine heard
from lately once, at the URL of its ``/metrics``, for Prometheus' HTTP service discovery."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import ServingProcess
from agents.selectors import MetricsMachine, metrics_machines
from agents.services.processes import (
    heartbeat_start,
    heartbeat_stop,
    metrics_url_of,
    process_seen,
)
from tests.polling import eventually

pytestmark = pytest.mark.django_db

TOKEN = "a-metrics-token"


@pytest.fixture(autouse=True)
def _metrics_token(settings):
    settings.METRICS_BEARER_TOKEN = TOKEN
    settings.PROCESS_STALE_SECONDS = 60


def seen(machine: str, kind: str, pid: int, url: str, *, ago: float = 0) -> None:
    now = timezone.now()
    process_seen(
        kind=kind,
        machine=machine,
        pid=pid,
        metrics_url=url,
        started_at=now - timedelta(hours=1),
        now=now - timedelta(seconds=ago),
    )


def machines(client, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get("/metrics/machines", headers=headers)


def test_each_machine_is_one_target_at_its_metrics_url(client):
    for pid in (101, 102):
        seen("front-1", "web", pid, "https://front-1.internal/metrics")
    seen("front-1", "gateway", 103, "https://front-1.internal/metrics")
    seen("sb-1", "relay", 201, "http://10.0.0.11:8090/metrics")

    response = machines(client)

    assert response.status_code == 200, response.content
    assert response.json() == [
        {
            "targets": ["front-1.internal"],
            "labels": {
                "__scheme__": "https",
                "__metrics_path__": "/metrics",
                "machine": "front-1",
                "role": "console",
            },
        },
        {
            "targets": ["10.0.0.11:8090"],
            "labels": {
                "__scheme__": "http",
                "__metrics_path__": "/metrics",
                "machine": "sb-1",
                "role": "sandbox-host",
            },
        },
    ]


def test_a_machine_silent_past_the_stale_time_is_not_listed(client):
    seen("front-1", "web", 101, "https://front-1.internal/metrics", ago=59)
    seen("front-2", "web", 101, "https://front-2.internal/metrics", ago=61)

    listed = [group["labels"]["machine"] for group in machines(client).json()]

    assert listed == ["front-1"]


def test_a_machine_running_a_web_process_and_a_relay_is_read_once_at_the_web_ones_url():
    seen("all-in-one", "relay", 7, "http://10.0.0.5:8090/metrics")
    seen("all-in-one", "gateway", 8, "http://127.0.0.1:8001/metrics")
    seen("all-in-one", "web", 9, "http://127.0.0.1:8000/metrics")

    found = metrics_machines(now=timezone.now())

    assert found == [
        MetricsMachine("all-in-one", "http://127.0.0.1:8000/metrics", ("gateway", "relay", "web"))
    ]


def test_a_process_seen_again_is_one_row_and_the_long_silent_are_forgotten():
    seen("front-1", "web", 101, "https://front-1.internal/metrics", ago=2 * 86400)
    seen("front-1", "web", 102, "https://front-1.internal/metrics", ago=10)
    seen("front-1", "web", 102, "https://front-1.internal/metrics")

    rows = list(ServingProcess.objects.values_list("pid", flat=True))

    assert rows == [102]


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_the_machines_are_listed_for_the_metrics_token_only(client, token):
    seen("front-1", "web", 101, "https://front-1.internal/metrics")

    response = machines(client, token)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_without_a_metrics_token_set_the_machines_are_listed_to_no_one(client, settings):
    settings.METRICS_BEARER_TOKEN = ""

    response = machines(client, "")

    assert response.status_code == 401
    assert "set METRICS_BEARER_TOKEN" in response.json()["error"]["message"]


def test_where_a_machines_metrics_are_read(settings):
    settings.CONSOLE_BASE_URL = "https://console.example.com"
    settings.SANDBOX_RELAY_URL = "http://10.0.0.11:8090"
    settings.METRICS_URL = ""
    assert metrics_url_of("web") == "https://console.example.com/metrics"
    assert metrics_url_of("gateway") == "https://console.example.com/metrics"
    assert metrics_url_of("relay") == "http://10.0.0.11:8090/metrics"
    settings.METRICS_URL = "https://front-2.internal/metrics"
    assert metrics_url_of("web") == metrics_url_of("relay") == "https://front-2.internal/metrics"


def test_no_heartbeat_when_it_is_turned_off(settings):
    settings.PROCESS_HEARTBEAT_SECONDS = 0

    assert heartbeat_start("web") is False


@pytest.fixture
def heartbeat() -> Iterator[None]:
    heartbeat_stop()
    yield
    heartbeat_stop()


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_records_this_process_and_keeps_it_fresh(settings, heartbeat):
    settings.PROCESS_HEARTBEAT_SECONDS = 0.1
    settings.SANDBOX_HOST_NAME = "this-machine"
    settings.METRICS_URL = "https://this-machine.internal/metrics"

    assert heartbeat_start("gateway") is True
    assert heartbeat_start("web") is True  # one heartbeat a process: the first kind stays

    def row() -> ServingProcess | None:
        return ServingProcess.objects.filter(machine="this-machine").first()

    first = eventually(row, 10, every=0.05)
    assert (first.kind, first.metrics_url) == ("gateway", "https://this-machine.internal/metrics")
    assert eventually(lambda: row().seen_at > first.seen_at, 10, every=0.05)
    assert ServingProcess.objects.count() == 1
    heartbeat_stop()
    last = row().seen_at
    threading.Event().wait(0.3)
    assert row().seen_at == last  # stopped
