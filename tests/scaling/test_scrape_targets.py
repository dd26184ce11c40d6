"""How Prometheus finds the agents and reads them: ``/metrics/targets`` lists every running agent
for its HTTP service discovery, labelled with its pool, and ``/agents/<id>/metrics`` serves
Prometheus an agent's runtime metrics with the METRICS_BEARER_TOKEN."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from agents.models import Agent
from console.models import User
from scaling.models import AUTOSCALER_ACCOUNT

pytestmark = pytest.mark.django_db

TOKEN = "a-metrics-token"
MODEL, PROMPT = "claude-sonnet-4-5", "You answer support questions."
_S = Agent.Status


@pytest.fixture(autouse=True)
def _metrics_token(settings):
    settings.METRICS_BEARER_TOKEN = TOKEN


def running(owner, *, prompt=PROMPT, model=MODEL, **fields) -> Agent:
    fields.setdefault("status", _S.RUNNING)
    fields.setdefault("endpoint", "http://127.0.0.1:9")
    return Agent.objects.create(owner=owner, model=model, system_prompt=prompt, **fields)


def targets(client, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get("/metrics/targets", headers=headers)


def by_agent(response) -> dict[str, dict]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    return {group["labels"]["agent_id"]: group for group in response.json()}


def test_every_running_agent_is_a_target_scraped_through_the_console(client, user):
    agent = running(user)

    (group,) = targets(client).json()

    assert group == {
        "targets": ["testserver"],
        "labels": {
            "__scheme__": "http",
            "__metrics_path__": f"/agents/{agent.pk}/metrics",
            "agent_id": str(agent.pk),
            "model": MODEL,
            "owner": "alice",
            "pool": "",
        },
    }


def test_an_agent_is_labelled_with_the_rule_whose_pool_it_is_in(client, user, outsider, make_rule):
    make_rule(name="support", owner=user, model=MODEL, system_prompt=PROMPT)
    make_rule(name="paused", owner=user, model=MODEL, system_prompt="Paused.", enabled=False)
    make_rule(name="house", owner=None, model=MODEL, system_prompt="House.")
    autoscaler = User.objects.create(username=AUTOSCALER_ACCOUNT, is_active=False)
    pooled = [running(user), running(user, draining_since=timezone.now())]
    paused = running(user, prompt="Paused.")
    house = running(autoscaler, prompt="House.")
    # The same template under another owner, another template, another model: no pool.
    theirs = running(outsider)
    other_prompt = running(user, prompt="Something else.")
    other_model = running(user, model="claude-haiku-4-5")
    not_autoscalers = running(user, prompt="House.")

    found = by_agent(targets(client))

    pools = {agent_id: group["labels"]["pool"] for agent_id, group in found.items()}
    assert pools == {
        str(pooled[0].pk): "support",
        str(pooled[1].pk): "support",
        str(paused.pk): "paused",
        str(house.pk): "house",
        str(theirs.pk): "",
        str(other_prompt.pk): "",
        str(other_model.pk): "",
        str(not_autoscalers.pk): "",
    }
    assert found[str(theirs.pk)]["labels"]["owner"] == "mallory"
    assert found[str(house.pk)]["labels"]["owner"] == AUTOSCALER_ACCOUNT
    assert found[str(other_model.pk)]["labels"]["model"] == "claude-haiku-4-5"


def test_a_renamed_rule_relabels_its_agents(client, user, make_rule):
    rule = make_rule(name="support", owner=user, model=MODEL, system_prompt=PROMPT)
    agent = running(user)
    rule.name = "helpdesk"
    rule.save()

    assert by_agent(targets(client))[str(agent.pk)]["labels"]["pool"] == "helpdesk"


def test_only_running_agents_with_an_endpoint_are_targets(client, user):
    listed = running(user)
    for status in (_S.PENDING, _S.STARTING, _S.STOPPING, _S.STOPPED, _S.FAILED):
        running(user, status=status)
    running(user, deleted_at=timezone.now())
    running(user, endpoint="")

    assert list(by_agent(targets(client))) == [str(listed.pk)]


def test_no_agent_running_is_an_empty_list(client):
    assert targets(client).json() == []


@pytest.mark.parametrize("agents", [3, 30])
def test_the_targets_are_read_in_two_queries_however_many_agents(
    client, user, outsider, make_rule, agents, django_assert_num_queries
):
    for n in range(agents):
        prompt = f"template {n % 5}"
        if n < 5:
            make_rule(name=f"pool-{n}", owner=user, model=MODEL, system_prompt=prompt)
        running(user if n % 2 else outsider, prompt=prompt)

    with django_assert_num_queries(2):
        response = targets(client)

    assert len(by_agent(response)) == agents


@pytest.mark.parametrize("token", [None, "wrong", "ac_not_the_token"])
def test_the_targets_need_the_metrics_token(client, user, token):
    running(user)

    response = targets(client, token)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_users_api_key_does_not_list_the_targets(client, operator, api_key):
    response = targets(client, api_key(operator))

    assert response.status_code == 401


def test_without_a_metrics_token_set_the_targets_are_served_to_no_one(client, user, settings):
    settings.METRICS_BEARER_TOKEN = ""
    running(user)

    for token in (None, "anything"):
        response = targets(client, token)
        assert response.status_code == 401
        assert "set METRICS_BEARER_TOKEN" in response.json()["error"]["message"]


# --- /agents/<id>/metrics ------------------------------------------------------------------------


def agent_metrics(client, agent_id, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(f"/agents/{agent_id}/metrics", headers=headers)


def test_the_metrics_token_reaches_any_users_agent(client, user):
    agent = running(user)  # nothing listens at its endpoint

    response = agent_metrics(client, agent.pk, TOKEN)

    assert response.status_code == 502  # let through, to a runtime that does not answer
    assert "could not be reached" in response.json()["error"]["message"]


def test_the_metrics_token_finds_no_deleted_or_unknown_agent(client, user):
    deleted = running(user, deleted_at=timezone.now())

    for agent_id in (deleted.pk, uuid.uuid4()):
        response = agent_metrics(client, agent_id, TOKEN)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "agent_not_found"


def test_a_stopped_agents_metrics_are_unavailable_to_the_token(client, user):
    agent = running(user, status=_S.STOPPED, endpoint="")

    response = agent_metrics(client, agent.pk, TOKEN)

    assert response.status_code == 502
    assert response.json()["error"]["details"] == {"status": "stopped"}


def test_other_users_are_still_refused_an_agents_metrics(client, user, outsider, api_key):
    agent = running(user)

    assert agent_metrics(client, agent.pk, api_key(outsider)).status_code == 404
    assert agent_metrics(client, agent.pk, "wrong").status_code == 401
    assert agent_metrics(client, agent.pk, None).status_code == 401
    assert agent_metrics(client, agent.pk, api_key(user)).status_code == 502  # the owner's


def test_without_a_metrics_token_set_no_token_reaches_an_agents_metrics(client, user, settings):
    settings.METRICS_BEARER_TOKEN = ""
    agent = running(user)

    assert agent_metrics(client, agent.pk, "").status_code == 401
    assert agent_metrics(client, agent.pk, "anything").status_code == 401
