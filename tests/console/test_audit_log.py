"""Operators' actions on agents are in the audit log (from the API and the admin), owners' own
are not; ``audit_events`` pages through the log, filtered, newest first, one query a page."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Agent
from console.models import AuditEvent
from console.selectors import audit_events
from console.services import audit_record
from plumbing.errors import BadRequest

pytestmark = pytest.mark.django_db


def _agent(owner, status: str = "running") -> Agent:
    return Agent.objects.create(
        owner=owner, model="claude-sonnet-5-5", sandbox_id=str(uuid.uuid4()), status=status
    )


@pytest.mark.parametrize(
    ("route", "action", "status"),
    [
        ("stop", "agent.stop", "running"),
        ("restart", "agent.restart", "running"),
        ("start", "agent.start", "stopped"),
    ],
)
def test_an_operators_lifecycle_action_on_an_agent_is_audited(
    user, operator, scoped_client, route, action, status
):
    agent = _agent(user, status)

    admin = scoped_client(operator, "read", "write", "admin")
    response = admin.post(f"/api/v1/agents/{agent.pk}/{route}")

    assert response.status_code == 200, response.content
    event = AuditEvent.objects.get()
    assert (event.actor, event.action, event.target_type, event.target_id) == (
        operator,
        action,
        "agents.agent",
        str(agent.pk),
    )
    assert event.changes["status"][0] == status


def test_an_operators_deletion_through_either_api_is_audited(user, operator, scoped_client):
    first, second = _agent(user), _agent(user)

    admin = scoped_client(operator, "read", "write", "admin")
    assert admin.delete(f"/api/v1/agents/{first.pk}").status_code == 200
    hypercore = admin.delete(f"/v1/agents/delete?agent_id={second.pk}")
    assert hypercore.status_code == 200, hypercore.content

    events = AuditEvent.objects.filter(action="agent.delete").order_by("at")
    assert [e.target_id for e in events] == [str(first.pk), str(second.pk)]
    assert all(e.changes["deleted_at"][0] is None for e in events)


def test_an_owner_acting_on_their_own_agent_is_not_an_operator_action(user, client_for):
    agent = _agent(user)

    assert client_for(user).post(f"/api/v1/agents/{agent.pk}/stop").status_code == 200

    assert not AuditEvent.objects.exists()


def test_an_admin_action_on_agents_is_audited(client, make_user, user):
    admin_user = make_user("root", is_staff=True, is_superuser=True)
    agents = [_agent(user), _agent(user)]
    client.force_login(admin_user)

    response = client.post(
        "/admin/agents/agent/",
        {"action": "stop", "_selected_action": [str(a.pk) for a in agents]},
    )

    assert response.status_code == 302
    events = AuditEvent.objects.filter(actor=admin_user, action="agent.stop")
    assert {e.target_id for e in events} == {str(a.pk) for a in agents}


def test_audit_events_are_filtered_and_paged_newest_first(
    user, operator, make_user, django_assert_num_queries
):
    other = make_user("oscar", is_staff=True)
    agent = _agent(user)
    now = timezone.now()
    for minutes, (actor, action) in enumerate(
        [
            (operator, "quota.change"),
            (operator, "budget.reset"),
            (other, "budget.change"),
            (operator, "budget.change"),
            (operator, "agent.stop"),
        ]
    ):
        event = audit_record(actor=actor, action=action, target=agent)
        AuditEvent.objects.filter(pk=event.pk).update(at=now - timedelta(minutes=10 - minutes))

    with django_assert_num_queries(1):
        page = audit_events(actor=operator, action="budget.", page_size=1)
        assert [(e.action, e.actor.username) for e in page.events] == [("budget.change", "olivia")]
    second = audit_events(actor=operator, action="budget.", page_size=1, cursor=page.next_cursor)
    assert [e.action for e in second.events] == ["budget.reset"]
    assert second.next_cursor is None

    assert [e.action for e in audit_events(action="agent.stop").events] == ["agent.stop"]
    assert len(audit_events(target_type="agents.agent").events) == 5
    recent = audit_events(since=now - timedelta(minutes=8, seconds=30))
    assert [e.action for e in recent.events] == ["agent.stop", "budget.change", "budget.change"]


def test_a_malformed_cursor_is_refused():
    with pytest.raises(BadRequest):
        audit_events(cursor="not-a-cursor")
