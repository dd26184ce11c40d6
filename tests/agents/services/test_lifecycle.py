"""The agent lifecycle against real sandboxes: idempotent boots, teardown, and reconcile."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from agents import sandbox
from agents.models import Agent
from agents.services import (
    agent_boot,
    agent_restart,
    agent_start,
    agent_stop,
    agent_teardown,
    agents_reap_idle,
    agents_reconcile,
    agents_stop_all,
)
from agents.services.lifecycle import _boot_lock
from config.celery import app
from plumbing.errors import AgentNotRunning
from vmdriver import VmSpec, VmState

pytestmark = pytest.mark.django_db(transaction=True)


def settings_state_dir() -> Path:
    from django.conf import settings

    return Path(settings.SANDBOX_STATE_DIR)


def _agent(owner, **fields) -> Agent:
    return Agent.objects.create(
        owner=owner, model="claude-sonnet-5-5", sandbox_id=str(uuid.uuid4()), **fields
    )


def _booted(owner) -> Agent:
    agent = _agent(owner)
    agent_boot(agent_id=str(agent.pk))
    agent.refresh_from_db()
    assert agent.status == "running", agent.last_error
    return agent


def test_booting_twice_starts_one_sandbox(user):
    agent = _booted(user)
    agent_boot(agent_id=str(agent.pk))
    agent.refresh_from_db()
    assert agent.status == "running"
    assert [s.id for s in sandbox.driver().list()] == [agent.sandbox_id]


def test_a_boot_for_a_deleted_agent_does_nothing(user):
    agent = _agent(user, status="stopping", deleted_at=timezone.now())
    agent_boot(agent_id=str(agent.pk))
    assert sandbox.driver().list() == []


def test_teardown_is_idempotent(user):
    agent = _booted(user)
    Agent.objects.filter(pk=agent.pk).update(status="stopping")
    agent_teardown(agent_id=str(agent.pk))
    agent_teardown(agent_id=str(agent.pk))
    agent.refresh_from_db()
    assert agent.status == "stopped"
    assert sandbox.driver().list() == []


def test_reconcile_fails_a_running_agent_whose_sandbox_died(user):
    agent = _booted(user)
    sandbox.driver().stop(agent.sandbox_id)
    assert agents_reconcile()["failed"] == 1
    agent.refresh_from_db()
    assert agent.status == "failed"
    assert "no longer running" in agent.last_error
    assert "listening on" in agent.last_error  # the runtime's last log lines come with it


def test_reconcile_boots_again_an_agent_whose_boot_was_interrupted(user, settings):
    agent = _agent(user, status="starting")
    stale = timezone.now() - timedelta(seconds=settings.SANDBOX_BOOT_TIMEOUT_SECONDS * 3)
    Agent.objects.filter(pk=agent.pk).update(updated_at=stale)
    assert agents_reconcile()["rebooted"] == 1
    agent.refresh_from_db()
    assert agent.status == "running", agent.last_error


def test_a_boot_interrupted_after_its_sandbox_started_keeps_the_healthy_sandbox(user):
    agent = _agent(user, status="starting")
    drv = sandbox.driver()
    started = drv.start(drv.create(sandbox.runtime_spec(agent=agent)))  # then the worker died
    assert agents_reconcile(restarted=True)["rebooted"] == 1  # at once after a restart
    agent.refresh_from_db()
    assert agent.status == "running", agent.last_error
    assert agent.endpoint == started.endpoint
    assert drv.status(agent.sandbox_id).pid == started.pid  # the same runtime, not a new one
    assert [s.id for s in drv.list()] == [agent.sandbox_id]


def test_a_boot_already_under_way_on_this_host_is_not_run_twice(user):
    agent = _agent(user)
    with _boot_lock(str(agent.pk)) as mine:
        assert mine
        agent_boot(agent_id=str(agent.pk))  # a redelivered task, while the first still runs
    agent.refresh_from_db()
    assert agent.status == "pending"
    assert sandbox.driver().list() == []


def test_reconcile_leaves_a_fresh_boot_alone(user):
    agent = _agent(user, status="starting")
    agents_reconcile()
    agent.refresh_from_db()
    assert agent.status == "starting"


def test_reconcile_destroys_orphaned_sandboxes_and_keeps_owned_ones(user):
    agent = _booted(user)
    drv = sandbox.driver()
    orphan = drv.start(drv.create(VmSpec(name="orphan", image=("sleep", "30"))))
    assert drv.status(orphan.id).state == VmState.RUNNING
    assert agents_reconcile()["orphans"] == 1
    assert [s.id for s in drv.list()] == [agent.sandbox_id]


def _stale(agent: Agent, settings, **fields) -> None:
    old = timezone.now() - timedelta(seconds=settings.SANDBOX_BOOT_TIMEOUT_SECONDS * 3)
    Agent.objects.filter(pk=agent.pk).update(updated_at=old, **fields)


def test_reconcile_finishes_a_stop_left_half_done(user, settings):
    agent = _booted(user)
    _stale(agent, settings, status="stopping")
    assert agents_reconcile()["stopped"] == 1
    agent.refresh_from_db()
    assert agent.status == "stopped"
    assert sandbox.driver().status(agent.sandbox_id).state == VmState.EXITED  # workspace kept


def test_reconcile_finishes_a_delete_left_half_done(user, settings):
    agent = _booted(user)
    _stale(agent, settings, status="stopping", deleted_at=timezone.now())
    assert agents_reconcile()["torn_down"] == 1
    agent.refresh_from_db()
    assert agent.status == "stopped"
    assert sandbox.driver().list() == []


def test_reconcile_leaves_a_fresh_stop_to_its_task(user):
    agent = _booted(user)
    Agent.objects.filter(pk=agent.pk).update(status="stopping")
    assert agents_reconcile()["stopped"] == 0
    assert sandbox.driver().status(agent.sandbox_id).state == VmState.RUNNING


def test_stop_keeps_the_workspace_and_start_boots_it_again(user):
    agent = _booted(user)
    workspace = Path(settings_state_dir()) / agent.sandbox_id / "workspace"
    (workspace / "notes.txt").write_text("kept")
    agent_stop(agent=agent)
    agent.refresh_from_db()
    assert agent.status == "stopped" and agent.endpoint == ""
    assert sandbox.driver().status(agent.sandbox_id).state == VmState.EXITED
    agent_start(agent=agent)
    agent.refresh_from_db()
    assert agent.status == "running", agent.last_error
    assert (workspace / "notes.txt").read_text() == "kept"


def test_restart_gives_a_fresh_runtime(user):
    agent = _booted(user)
    before = sandbox.driver().status(agent.sandbox_id).pid
    agent_restart(agent=agent)
    agent.refresh_from_db()
    assert agent.status == "running", agent.last_error
    assert sandbox.driver().status(agent.sandbox_id).pid != before


def test_only_a_stopped_or_failed_agent_can_be_started(user):
    agent = _booted(user)
    with pytest.raises(AgentNotRunning):
        agent_start(agent=agent)


def test_stopping_a_stopped_agent_is_refused(user):
    agent = _agent(user, status="stopped")
    with pytest.raises(AgentNotRunning):
        agent_stop(agent=agent)


def test_stop_all_stops_every_active_agent_and_leaves_the_others(user, operator):
    mine, theirs = _booted(user), _booted(operator)
    stopped = _agent(user, status="stopped")
    deleted = _agent(user, status="stopping", deleted_at=timezone.now())
    assert {agent.pk for agent in agents_stop_all()} == {mine.pk, theirs.pk}
    for agent in (mine, theirs):
        agent.refresh_from_db()
        assert agent.status == "stopped"
        assert sandbox.driver().status(agent.sandbox_id).state == VmState.EXITED
    assert Agent.objects.get(pk=stopped.pk).status == "stopped"
    assert Agent.objects.get(pk=deleted.pk).status == "stopping"  # its teardown's business


def test_the_operators_tool_settings_reach_every_sandbox(user, settings):
    settings.AGENT_RUNTIME_ENV = {"AGENT_TOOLS": "read_file", "AGENT_MAX_TOOL_ROUNDS": "3"}
    agent = _agent(user)
    env = sandbox.runtime_spec(agent=agent).env
    assert env["AGENT_TOOLS"] == "read_file" and env["AGENT_MAX_TOOL_ROUNDS"] == "3"
    assert env["AGENT_ID"] == str(agent.pk)


def test_idle_agents_are_stopped_and_busy_ones_kept(user, settings):
    settings.AGENT_IDLE_TIMEOUT_SECONDS = 600
    idle, busy = _booted(user), _booted(user)
    Agent.objects.filter(pk=idle.pk).update(last_active_at=timezone.now() - timedelta(seconds=601))
    assert agents_reap_idle() == 1
    idle.refresh_from_db()
    busy.refresh_from_db()
    assert (idle.status, busy.status) == ("stopped", "running")


def test_the_idle_reaper_can_be_switched_off(user, settings):
    settings.AGENT_IDLE_TIMEOUT_SECONDS = 0
    agent = _booted(user)
    Agent.objects.filter(pk=agent.pk).update(last_active_at=timezone.now() - timedelta(days=9))
    assert agents_reap_idle() == 0


def test_beat_runs_reconcile_on_its_interval(settings):
    entry = app.conf.beat_schedule["reconcile-sandboxes"]
    assert entry["task"] == "agents.tasks.agents_reconcile"
    assert entry["schedule"] == settings.RECONCILE_INTERVAL_SECONDS
    assert app.conf.beat_schedule["reap-idle-agents"]["task"] == "agents.tasks.agents_reap_idle"
    app.loader.import_default_modules()  # what a worker does at start: autodiscover the tasks
    assert "agents.tasks.agents_reconcile" in app.tasks


def test_operators_stop_start_and_restart_agents_from_the_admin(user, operator, client):
    agent = _booted(user)
    operator.is_superuser = True
    operator.save()
    client.force_login(operator)
    url = "/admin/agents/agent/"
    for action, expected in (("stop", "stopped"), ("start", "running"), ("restart", "running")):
        response = client.post(url, {"action": action, "_selected_action": [str(agent.pk)]})
        assert response.status_code == 302
        agent.refresh_from_db()
        assert agent.status == expected, (action, agent.last_error)
    response = client.post(
        url, {"action": "start", "_selected_action": [str(agent.pk)]}, follow=True
    )
    assert "Refused" in response.content.decode()  # a running agent cannot be started
