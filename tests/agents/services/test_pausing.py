"""Pausing and resuming agents against real sandboxes: the idle policy (stop or pause, per
agent and per warm pool), what a paused agent holds on its host, reconcile, and races."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from agents import sandbox
from agents.models import Agent, SandboxHost, WarmPool
from agents.services import (
    agent_boot,
    agent_freeze,
    agent_pause,
    agent_resume,
    agent_spawn,
    agent_stop,
    agent_thaw,
    agents_reap_idle,
    agents_reconcile,
    hosts_usage,
    warm_pool_refill,
)
from agents.services.pausing import agents_snapshot_paused
from plumbing.errors import AgentNotRunning, Conflict
from vmdriver import VmState

pytestmark = pytest.mark.django_db(transaction=True)


def _booted(owner, **fields) -> Agent:
    agent = Agent.objects.create(
        owner=owner, model="claude-sonnet-5-5", sandbox_id=str(uuid.uuid4()), **fields
    )
    agent_boot(agent_id=str(agent.pk))
    agent.refresh_from_db()
    assert agent.status == "running", agent.last_error
    return agent


def _idle(*agents: Agent) -> None:
    long_ago = timezone.now() - timedelta(seconds=601)
    Agent.objects.filter(pk__in=[a.pk for a in agents]).update(last_active_at=long_ago)


def test_idle_agents_are_paused_or_stopped_as_each_one_says(user, settings):
    settings.AGENT_IDLE_TIMEOUT_SECONDS = 600
    pausing, stopping, busy = _booted(user, on_idle="pause"), _booted(user), _booted(user)
    _idle(pausing, stopping)

    assert agents_reap_idle() == 2

    for agent in (pausing, stopping, busy):
        agent.refresh_from_db()
    assert (pausing.status, stopping.status, busy.status) == ("paused", "stopped", "running")
    assert pausing.pause_method in ("freezer", "sigstop") and pausing.paused_at is not None
    assert sandbox.driver().status(pausing.sandbox_id).state is VmState.PAUSED
    assert agents_reap_idle() == 0  # a paused agent is not idle: it is paused


def test_a_claimed_warm_agent_idles_as_its_pool_says_unless_the_spawn_chooses(user, settings):
    settings.AGENT_IDLE_TIMEOUT_SECONDS = 0
    pool = WarmPool.objects.create(name="p", model="claude-sonnet-5-5", size=2, on_idle="pause")
    assert warm_pool_refill(pool_id=pool.pk) == 2
    template = {"model": "claude-sonnet-5-5", "memory_mib": 512}

    first = agent_spawn(owner=user, **template)
    second = agent_spawn(owner=user, on_idle="stop", **template)

    assert (first.warm_pool_id, second.warm_pool_id) == (None, None)  # both claimed
    assert (first.on_idle, second.on_idle) == ("pause", "stop")
    assert Agent.objects.get(pk=first.pk).on_idle == "pause"


def test_a_paused_agent_holds_its_memory_on_its_host_but_no_cpu(user, settings):
    host = SandboxHost.objects.get(name=settings.SANDBOX_HOST_NAME)
    agent = _booted(user, vcpus=3, memory_mib=700, host=host)
    host_id = host.pk
    running = hosts_usage(host_ids=[host_id])[host_id]

    agent_pause(agent=agent)

    paused = hosts_usage(host_ids=[host_id])[host_id]
    assert (running["vcpus"], running["memory"]) == (3, 700)
    assert (paused["vcpus"], paused["memory"], paused["agents"]) == (0, 700, 1)


def test_reconcile_fails_a_paused_agent_whose_sandbox_died_and_keeps_a_live_one(user):
    dead, alive = _booted(user), _booted(user)
    agent_pause(agent=dead)
    agent_pause(agent=alive)
    sandbox.driver().stop(dead.sandbox_id)

    assert agents_reconcile()["failed"] == 1

    dead.refresh_from_db()
    alive.refresh_from_db()
    assert (dead.status, alive.status) == ("failed", "paused")
    assert "no longer running" in dead.last_error


def test_a_paused_agent_stops_and_starts_again(user):
    agent = _booted(user)
    agent_pause(agent=agent)
    agent.refresh_from_db()

    agent_stop(agent=agent)

    agent.refresh_from_db()
    assert agent.status == "stopped"
    assert sandbox.driver().status(agent.sandbox_id).state is VmState.EXITED


def test_a_resume_before_the_freeze_ran_leaves_the_agent_running(user):
    agent = _booted(user)
    # Recorded as pausing, its freeze not yet run; then resumed: the thaw runs first.
    Agent.objects.filter(pk=agent.pk).update(status="pausing")
    agent.refresh_from_db()
    Agent.objects.filter(pk=agent.pk).update(status="resuming")
    agent_thaw(agent_id=str(agent.pk))
    agent_freeze(agent_id=str(agent.pk))  # the late freeze finds it running: nothing to do

    agent.refresh_from_db()
    assert agent.status == "running"
    assert sandbox.driver().status(agent.sandbox_id).state is VmState.RUNNING


def test_pausing_twice_and_resuming_twice_change_nothing(user):
    agent = _booted(user)
    paused = agent_pause(agent=agent)
    assert agent_pause(agent=paused).status == "paused"
    resumed = agent_resume(agent=paused)
    assert resumed.status == "running"
    assert agent_resume(agent=resumed).status == "running"


def test_a_pending_agent_cannot_be_paused(user):
    agent = Agent.objects.create(owner=user, model="claude-sonnet-5-5", sandbox_id="x")
    with pytest.raises(AgentNotRunning):
        agent_pause(agent=agent)


def test_only_microvms_paused_in_memory_long_enough_are_saved_to_disk(user, settings):
    settings.AGENT_PAUSE_SNAPSHOT_SECONDS = 60
    agent = _booted(user)
    agent_pause(agent=agent)
    long_ago = timezone.now() - timedelta(seconds=61)
    Agent.objects.filter(pk=agent.pk).update(paused_at=long_ago)
    assert agents_snapshot_paused() == 0  # a process keeps its memory: nothing to save
    settings.AGENT_PAUSE_SNAPSHOT_SECONDS = 0
    Agent.objects.filter(pk=agent.pk).update(pause_method="vm-stop")
    assert agents_snapshot_paused() == 0  # switched off


def test_a_warm_agent_waiting_for_a_spawn_is_not_paused(settings):
    pool = WarmPool.objects.create(name="w", model="claude-sonnet-5-5", size=1)
    assert warm_pool_refill(pool_id=pool.pk) == 1
    warm = Agent.objects.get(warm_pool=pool)
    with pytest.raises(Conflict):
        agent_pause(agent=warm)
    warm.refresh_from_db()
    assert warm.status == "running"
