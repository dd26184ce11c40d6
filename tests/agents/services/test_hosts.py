"""Sandbox hosts: placement by capacity, a clear 503 when full, heartbeats and stale hosts, and
real workers as hosts."""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from agents import sandbox
from agents.models import Agent, SandboxHost
from agents.services import agent_spawn, host_register, hosts_mark_stale
from agents.tasks import hosts_mark_stale as hosts_mark_stale_task
from agents.worker import HostHeartbeat
from config.celery import app
from plumbing.errors import CapacityExhausted
from tests.agents.workers import (
    RELAY_KEY,
    embedded_broker,
    start_relay,
    start_worker,
    wait_for,
)
from vmdriver import VmState


def _host(name: str, vcpus: int, memory: int = 8192, **fields) -> SandboxHost:
    host = host_register(
        name=name, backend="process", capacity_vcpus=vcpus, capacity_memory_mib=memory
    )
    SandboxHost.objects.filter(pk=host.pk).update(**fields)
    return host


@pytest.fixture
def only_hosts(db, settings):
    """Replace the test host with the ones a test makes."""
    SandboxHost.objects.all().delete()
    return _host


@pytest.mark.django_db
class TestPlacement:
    def test_an_agent_goes_to_the_host_with_most_room(self, user, only_hosts):
        small, big = only_hosts("small", 4), only_hosts("big", 8)
        Agent.objects.create(
            owner=user, model="m", sandbox_id="x", host=big, vcpus=6, status="running"
        )
        agent = self._spawn(user, vcpus=1)
        assert agent.host == small  # 3 free on small against 2 on big

    def _spawn(self, user, **fields) -> Agent:
        from django.db import transaction

        with transaction.atomic():  # on-commit boots never run inside the test's transaction
            return agent_spawn(owner=user, **fields)

    def test_a_host_without_room_for_the_memory_is_skipped(self, user, only_hosts):
        only_hosts("roomy-cpu", 64, memory=512)
        roomy = only_hosts("roomy-memory", 2, memory=65536)
        assert self._spawn(user, memory_mib=1024).host == roomy

    def test_draining_and_offline_hosts_take_no_agents(self, user, only_hosts):
        only_hosts("draining", 64, is_draining=True)
        only_hosts("offline", 64, is_online=False)
        online = only_hosts("online", 1)
        assert self._spawn(user).host == online

    def test_when_no_host_has_room_spawning_is_refused_with_the_reason(self, user, only_hosts):
        only_hosts("a", 2)
        with pytest.raises(CapacityExhausted) as refused:
            self._spawn(user, vcpus=3)
        assert refused.value.details["hosts"] == [
            {"name": "a", "free_vcpus": 2, "free_memory_mib": 8192}
        ]
        assert not Agent.objects.exists()

    def test_the_api_answers_503_with_retry_after_when_full(self, user, only_hosts, client_for):
        only_hosts("a", 1)
        response = client_for(user).post("/v1/agents/spawn", {"cores": 2}, format="json")
        assert response.status_code == 503
        assert response["Retry-After"] == "30"
        error = response.json()["error"]
        assert error["code"] == "no_capacity"
        assert "no sandbox host has room for 2 vCPUs" in error["message"]

    def test_with_no_host_online_the_api_says_so(self, user, only_hosts, client_for):
        response = client_for(user).post("/v1/agents/spawn", {}, format="json")
        assert response.status_code == 503
        assert response.json()["error"]["message"] == "no process sandbox host is online"


def _silent_for(seconds: float):  # type: ignore[no-untyped-def]
    """A last_seen_at that many seconds ago."""
    return timezone.now() - timedelta(seconds=seconds)


@pytest.mark.django_db
class TestStaleHosts:
    def test_a_host_that_stopped_heartbeating_takes_no_agents(self, user, only_hosts, settings):
        only_hosts("silent", 64, last_seen_at=_silent_for(settings.SANDBOX_HOST_STALE_SECONDS + 1))
        fresh = only_hosts("fresh", 1, last_seen_at=_silent_for(1))
        assert agent_spawn(owner=user).host == fresh

    def test_with_every_host_silent_spawning_says_none_is_online(self, user, only_hosts, settings):
        silent_since = _silent_for(settings.SANDBOX_HOST_STALE_SECONDS + 1)
        only_hosts("silent", 64, last_seen_at=silent_since)
        with pytest.raises(CapacityExhausted) as refused:
            agent_spawn(owner=user)
        assert refused.value.message == "no process sandbox host is online"
        assert refused.value.details["hosts"] == []
        assert refused.value.details["stale_hosts"] == [
            {"name": "silent", "last_seen_at": silent_since.isoformat()}
        ]

    def test_beat_takes_a_silent_host_offline_and_fails_its_agents(
        self, user, only_hosts, settings
    ):
        silent_since = _silent_for(settings.SANDBOX_HOST_STALE_SECONDS + 1)
        silent = only_hosts("silent", 64, last_seen_at=silent_since)
        fresh = only_hosts("fresh", 64)
        on_silent = {
            status: Agent.objects.create(
                owner=user, model="m", sandbox_id=status, host=silent, status=status
            )
            for status in ("pending", "starting", "running", "stopping", "stopped")
        }
        elsewhere = Agent.objects.create(
            owner=user, model="m", sandbox_id="elsewhere", host=fresh, status="running"
        )

        assert hosts_mark_stale_task() == ["silent"]

        silent.refresh_from_db()
        assert not silent.is_online
        assert silent.last_seen_at == silent_since  # still when it last answered
        assert {was: _status(agent) for was, agent in on_silent.items()} == {
            "pending": "failed",
            "starting": "failed",
            "running": "failed",
            "stopping": "stopped",
            "stopped": "stopped",
        }
        assert on_silent["running"].last_error.startswith("host silent stopped answering")
        assert on_silent["stopped"].last_error == ""
        assert _status(elsewhere) == "running"
        fresh.refresh_from_db()
        assert fresh.is_online
        assert hosts_mark_stale() == []  # nothing left to do

    def test_beat_looks_for_silent_hosts_every_heartbeat(self, settings):
        entry = app.conf.beat_schedule["mark-stale-hosts"]
        assert entry["task"] == "agents.tasks.hosts_mark_stale"
        assert entry["schedule"] == settings.SANDBOX_HOST_HEARTBEAT_SECONDS
        app.loader.import_default_modules()
        assert "agents.tasks.hosts_mark_stale" in app.tasks


@pytest.mark.django_db(transaction=True)  # a beat closes its connection, as its thread must
def test_a_heartbeat_brings_a_silent_host_back(only_hosts, settings):
    only_hosts(
        "back",
        4,
        is_online=False,
        last_seen_at=_silent_for(settings.SANDBOX_HOST_STALE_SECONDS + 1),
    )
    assert HostHeartbeat("back", interval=60).beat() is True
    host = SandboxHost.objects.get(name="back")
    assert host.is_online
    assert host.last_seen_at > _silent_for(5)
    assert hosts_mark_stale() == []


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_for_an_unregistered_host_records_nothing(only_hosts):
    assert HostHeartbeat("nobody", interval=60).beat() is False
    assert not SandboxHost.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_beats_until_it_is_stopped(only_hosts):
    host = only_hosts("here", 4, last_seen_at=_silent_for(60))
    heartbeat = HostHeartbeat("here", interval=0.05)
    heartbeat.start()
    try:
        wait_for(
            lambda: SandboxHost.objects.get(pk=host.pk).last_seen_at > _silent_for(5),
            10,
            "a heartbeat",
        )
    finally:
        heartbeat.stop()
    last = SandboxHost.objects.get(pk=host.pk).last_seen_at
    time.sleep(0.2)
    assert SandboxHost.objects.get(pk=host.pk).last_seen_at == last


def _forget_connections() -> None:
    """Drop this process's broker connections, so that the next ones go to the broker the
    settings name now (Celery's own reset after a fork)."""
    app._after_fork()


@pytest.fixture
def real_workers(transactional_db, settings, tmp_path, monkeypatch):
    """Celery workers as separate processes; tasks go through the broker (the one ``make run``
    starts), not eagerly."""
    settings.GATEWAY_URL = "http://127.0.0.1:9/gateway"
    SandboxHost.objects.all().delete()
    workers = []
    broker = contextlib.ExitStack()
    url = broker.enter_context(embedded_broker(tmp_path / "var"))
    settings.CELERY_BROKER_URL = url
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery's, and the workers'
    _forget_connections()
    app.conf.task_always_eager = False
    try:
        yield (
            lambda name, vcpus, **env: (
                workers.append(start_worker(name, tmp_path, vcpus=vcpus, **env)) or (workers[-1])
            )
        )
    finally:
        app.conf.task_always_eager = True
        for worker in workers:
            worker.stop()
        for worker in workers:
            settings.SANDBOX_STATE_DIR = worker.state_dir
            sandbox.driver.cache_clear()
            for status in sandbox.driver().list():
                sandbox.driver().destroy(status.id)
        sandbox.driver.cache_clear()
        _forget_connections()
        broker.close()


def _online(*names: str) -> bool:
    return SandboxHost.objects.filter(name__in=names, is_online=True).count() == len(names)


def _status(agent: Agent) -> str:
    agent.refresh_from_db()
    return agent.status


def test_two_workers_serve_two_hosts_each_from_its_own_queue(user, real_workers):
    alpha, beta = real_workers("alpha", 2), real_workers("beta", 2)
    wait_for(
        lambda: _online("alpha", "beta"),
        60,
        f"both workers to register their hosts:\n{alpha.output()[-1500:]}\n{beta.output()[-1500:]}",
    )
    first = agent_spawn(owner=user, vcpus=2, memory_mib=128)
    second = agent_spawn(owner=user, vcpus=2, memory_mib=128)
    assert {first.host.name, second.host.name} == {"alpha", "beta"}
    for agent in (first, second):
        worker = alpha if agent.host.name == "alpha" else beta
        wait_for(
            lambda a=agent: _status(a) in ("running", "failed"),
            60,
            f"the boot on {worker.name}:\n{worker.output()[-3000:]}",
        )
        assert agent.status == "running", agent.last_error
        assert (worker.state_dir / agent.sandbox_id).is_dir()  # booted by its own host
    with pytest.raises(CapacityExhausted):
        agent_spawn(owner=user, vcpus=1, memory_mib=128)


def test_a_worker_with_a_relay_records_its_agents_at_the_relay_which_serves_them(
    user, real_workers, settings, tmp_path
):
    settings.SANDBOX_RELAY_KEY = RELAY_KEY
    # The host's relay first: the worker registers the address it listens at.
    relay = start_relay("zeta", tmp_path / "sandboxes-zeta", tmp_path)
    try:
        worker = real_workers("zeta", 2, SANDBOX_RELAY_URL=relay.url, SANDBOX_RELAY_KEY=RELAY_KEY)
        wait_for(lambda: _online("zeta"), 60, "the worker to register its host", worker)
        assert SandboxHost.objects.get(name="zeta").relay_url == relay.url
        agent = agent_spawn(owner=user, vcpus=1, memory_mib=128)
        wait_for(lambda: _status(agent) in ("running", "failed"), 60, "the boot", worker)
        assert agent.status == "running", agent.last_error
        assert agent.endpoint == f"{relay.url}/{agent.pk}"
        with sandbox.runtime_client_sync(agent.endpoint, timeout=10) as client:
            health = client.get("/health")
        assert health.status_code == 200 and health.json()["agent_id"] == str(agent.pk)
    finally:
        relay.stop()


def test_a_worker_killed_mid_boot_boots_the_agent_once_it_is_back(user, real_workers, settings):
    worker = real_workers("gamma", 8)
    wait_for(lambda: _online("gamma"), 60, "the worker to register its host")
    for _attempt in range(3):
        agent = agent_spawn(owner=user, vcpus=1, memory_mib=128)
        wait_for(lambda a=agent: _status(a) != "pending", 30, "the boot to start")
        worker.kill()
        if _status(agent) == "starting":
            break  # killed in the middle of the boot, as intended
        worker = real_workers("gamma", 8)
        wait_for(lambda: _online("gamma"), 60, "the worker to come back")
    else:
        pytest.fail("the boot always finished before the worker could be killed")

    worker = real_workers("gamma", 8)  # what make run's launcher does
    wait_for(
        lambda: _status(agent) in ("running", "failed"),
        60,
        "the restarted worker to take the boot up",
        worker,
    )
    assert agent.status == "running", agent.last_error
    settings.SANDBOX_STATE_DIR = worker.state_dir
    sandbox.driver.cache_clear()
    running = [s.id for s in sandbox.driver().list() if s.state == VmState.RUNNING]
    live_agents = set(Agent.objects.filter(status="running").values_list("sandbox_id", flat=True))
    assert set(running) == live_agents  # one sandbox per running agent, and no other


def _last_seen(name: str):  # type: ignore[no-untyped-def]
    return SandboxHost.objects.get(name=name).last_seen_at


def test_a_killed_workers_host_goes_offline_and_its_agents_fail(user, real_workers, settings):
    worker = real_workers("delta", 2, SANDBOX_HOST_HEARTBEAT_SECONDS="0.2")
    wait_for(lambda: _online("delta"), 60, "the worker to register its host", worker)
    registered = _last_seen("delta")
    wait_for(lambda: _last_seen("delta") > registered, 10, "a heartbeat from the worker", worker)
    agent = Agent.objects.create(
        owner=user,
        model="m",
        sandbox_id="x",
        host=SandboxHost.objects.get(name="delta"),
        status="running",
    )

    worker.kill()
    settings.SANDBOX_HOST_STALE_SECONDS = 1.0
    wait_for(lambda: hosts_mark_stale() == ["delta"], 10, "the host to go stale")

    assert not _online("delta")
    assert _status(agent) == "failed"
    assert agent.last_error.startswith("host delta stopped answering")
    with pytest.raises(CapacityExhausted, match="no process sandbox host is online"):
        agent_spawn(owner=user, vcpus=1, memory_mib=128)


def test_a_stopped_worker_stops_heartbeating_before_it_takes_its_host_offline(real_workers):
    worker = real_workers("epsilon", 2, SANDBOX_HOST_HEARTBEAT_SECONDS="0.1")
    wait_for(lambda: _online("epsilon"), 60, "the worker to register its host", worker)
    worker.stop()
    assert not _online("epsilon"), worker.output()[-3000:]
    time.sleep(0.5)  # five heartbeats' time: none may bring the host back
    assert not _online("epsilon")
