"""A draining agent (one the autoscaler is retiring) gets no new session anywhere one is opened
or picked, while its open sessions go on; starting it again ends the draining."""

from __future__ import annotations

import asyncio

import pytest
from django.utils import timezone

from agents import services
from agents.models import Agent, Session
from agents.services.live import live_turn_ask
from plumbing.errors import AgentDraining, AgentNotRunning

API = "/api/v1"


def _agent(owner, **fields) -> Agent:
    fields = {"model": "claude-sonnet-4-5", "status": Agent.Status.RUNNING, **fields}
    return Agent.objects.create(owner=owner, **fields)


@pytest.mark.django_db
def test_a_session_cannot_be_opened_on_a_draining_agent(user, client_for):
    agent = _agent(user, draining_since=timezone.now())

    response = client_for(user).post(
        f"{API}/sessions", {"agent_id": str(agent.pk), "title": "Plans"}, format="json"
    )

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "agent_draining"
    assert error["details"] == {"agent_id": str(agent.pk)}
    assert not Session.objects.exists()


@pytest.mark.django_db
def test_the_agent_picked_for_a_task_is_never_draining(user):
    draining = _agent(user, draining_since=timezone.now())
    serving = _agent(user)
    Session.objects.create(agent=serving, user=user)  # busier than the draining one

    assert services.task_agent(user=user, agent_id=None) == serving
    with pytest.raises(AgentDraining):
        services.task_agent(user=user, agent_id=draining.pk)
    Agent.objects.filter(pk=serving.pk).update(draining_since=timezone.now())
    with pytest.raises(AgentNotRunning, match="you have no running agent"):
        services.task_agent(user=user, agent_id=None)


@pytest.mark.django_db(transaction=True)
def test_a_chat_turn_opens_no_new_session_on_a_draining_agent(user):
    agent = _agent(user, draining_since=timezone.now())
    ask = live_turn_ask(
        user=user, agent_id=agent.pk, session_id=None, prompt="hello", max_tokens=256
    )

    with pytest.raises(AgentDraining):
        asyncio.run(ask)

    assert not Session.objects.exists()


@pytest.mark.django_db
def test_starting_a_stopped_agent_again_ends_its_draining(user, django_capture_on_commit_callbacks):
    agent = _agent(user, status=Agent.Status.STOPPED, draining_since=timezone.now())

    with django_capture_on_commit_callbacks():
        services.agent_start(agent=agent)

    agent.refresh_from_db()
    assert agent.draining_since is None
    assert agent.status == Agent.Status.PENDING
