"""The chat page's views (``agents.pages``): who sees what, starting a chat, searching chats."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from agents.models import Agent, Session
from console.models import Budget
from console.services import quota_get

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(user) -> Agent:
    return Agent.objects.create(owner=user, name="helper", model="claude-sonnet-4-5")


@pytest.fixture
def alice(client, user):
    client.force_login(user)
    return client


def test_the_chat_page_needs_a_signed_in_user(client):
    response = client.get("/chat/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_page_lists_your_chats_only_and_searches_their_titles(
    alice, user, outsider, agent, django_assert_num_queries
):
    theirs = Agent.objects.create(owner=outsider, name="other", model="claude-sonnet-4-5")
    Session.objects.create(agent=theirs, user=outsider, title="Their secret plans")
    for title in ("Holiday plans", "Tax questions", "Plans for the garden"):
        Session.objects.create(agent=agent, user=user, title=title)

    with django_assert_num_queries(5):  # session, user, chats, agents, budgets
        page = alice.get("/chat/").content.decode()
    assert "Holiday plans" in page and "Tax questions" in page
    assert "Their secret plans" not in page

    found = alice.get("/chat/", {"q": "plans"}).content.decode()
    assert "Holiday plans" in found and "Plans for the garden" in found
    assert "Tax questions" not in found and "Their secret plans" not in found


def test_a_chat_page_shows_its_session_and_another_users_does_not_exist(
    alice, user, outsider, agent
):
    mine = Session.objects.create(agent=agent, user=user, title="Mine")
    theirs = Session.objects.create(
        agent=Agent.objects.create(owner=outsider, name="x", model="claude-sonnet-4-5"),
        user=outsider,
        title="Theirs",
    )

    page = alice.get(f"/chat/{mine.pk}").content.decode()
    assert f'data-session-id="{mine.pk}"' in page and 'data-socket="/ws/chat/"' in page
    assert "vendor/markdown-it/markdown-it.min.js" in page
    assert "vendor/dompurify/purify.min.js" in page
    assert alice.get(f"/chat/{theirs.pk}").status_code == 404


def test_new_chat_with_one_of_your_agents_opens_a_session(alice, user, agent):
    response = alice.post(reverse("chat-new"), {"agent_id": agent.pk})

    session = Session.objects.get()
    assert (session.agent, session.user, session.title) == (agent, user, "")
    assert response.status_code == 302
    assert response["Location"] == reverse("chat-session", args=[session.pk])


def test_new_chat_without_an_agent_spawns_one(alice, user):
    response = alice.post(reverse("chat-new"), {"name": "Scribe", "system_prompt": "Be brief."})

    agent = Agent.objects.get()
    assert (agent.owner, agent.name, agent.system_prompt) == (user, "Scribe", "Be brief.")
    assert response["Location"] == reverse("chat-session", args=[Session.objects.get().pk])


def test_new_chat_refusals_come_back_as_a_message(alice, user, outsider):
    quota = quota_get(user=user)
    quota.max_agents = 0
    quota.save()
    response = alice.post(reverse("chat-new"), {"name": "One too many"}, follow=True)
    assert "max_agents" in response.content.decode()

    theirs = Agent.objects.create(owner=outsider, name="x", model="claude-sonnet-4-5")
    response = alice.post(reverse("chat-new"), {"agent_id": theirs.pk}, follow=True)
    assert f"you have no agent {theirs.pk}" in response.content.decode()
    assert not Session.objects.exists() and Agent.objects.count() == 1


def test_budgets_read_as_amounts_not_exponents(alice, user, agent):
    Budget.objects.create(user=user, metric="usd", window="month", limit=Decimal("40"))
    session = Session.objects.create(agent=agent, user=user, title="t")

    html = alice.get(reverse("chat-session", args=[session.pk])).content.decode()

    assert "$40 left of $40" in html
    assert "E+" not in html
