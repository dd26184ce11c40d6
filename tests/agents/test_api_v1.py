"""``/api/v1/`` agents, sessions, messages and one-shot tasks, against the database only: who
may see and do what, validation, filters, cursor pagination, state conflicts and query counts.

Turns that reach a real runtime are in ``test_api_v1_live.py``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import Agent, AgentDemand, Message, Session

pytestmark = pytest.mark.django_db

API = "/api/v1"


def _operator_client(scoped_client, operator):
    """An operator's client: a staff user's key with the admin scope (without it, a staff
    user's key is a user's key)."""
    return scoped_client(operator, "read", "write", "admin")


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def _agent(owner, **fields) -> Agent:
    fields = {"model": "claude-sonnet-5-5", "status": "running", **fields}
    return Agent.objects.create(owner=owner, **fields)


def _session(agent: Agent, **fields) -> Session:
    return Session.objects.create(agent=agent, user=agent.owner, **fields)


def _message(session: Session, role: str, content: str, **fields) -> Message:
    return Message.objects.create(session=session, role=role, content=content, **fields)


@pytest.fixture
def alices(user):
    """An agent of alice's with an open session holding one exchange."""
    agent = _agent(user, name="helper")
    session = _session(agent, title="first")
    _message(session, "user", "hi")
    _message(session, "assistant", "hello", input_tokens=3, output_tokens=2)
    return agent, session


# Every route, with a body that passes validation, about alice's own agent and session.
ROUTES = [
    ("get", "/agents", None),
    ("post", "/agents", {"cores": 1}),
    ("get", "/agents/{agent}", None),
    ("delete", "/agents/{agent}", None),
    ("post", "/agents/{agent}/stop", None),
    ("post", "/agents/{agent}/start", None),
    ("post", "/agents/{agent}/restart", None),
    ("post", "/agents/{agent}/pause", None),
    ("post", "/agents/{agent}/resume", None),
    ("get", "/agents/{agent}/logs", None),
    ("post", "/sessions", {"agent_id": "{agent}"}),
    ("get", "/sessions", None),
    ("get", "/sessions/{session}", None),
    ("post", "/sessions/{session}/close", None),
    ("post", "/sessions/{session}/messages", {"content": "hi"}),
    ("post", "/sessions/{session}/cancel", None),
    ("post", "/execute", {"task_description": "hi"}),
]
WRITES = [route for route in ROUTES if route[0] != "get"]
READS = [route for route in ROUTES if route[0] == "get"]
OBJECT_ROUTES = [route for route in ROUTES if "{" in route[1]] + [
    ("post", "/sessions", {"agent_id": "{agent}"}),
    ("post", "/execute", {"task_description": "hi", "agent_id": "{agent}"}),
]


def _call(client, route, agent: Agent, session: Session):
    method, path, body = route
    names = {"agent": agent.pk, "session": session.pk}
    url = API + path.format(**names)
    if body is None:
        return getattr(client, method)(url)
    body = {k: v.format(**names) if isinstance(v, str) else v for k, v in body.items()}
    return getattr(client, method)(url, body, content_type="application/json")


def _unchanged(agent: Agent, session: Session) -> None:
    before_agent = (agent.status, agent.deleted_at)
    before_session = (session.closed_at, session.messages.count())
    agent.refresh_from_db()
    session.refresh_from_db()
    assert (agent.status, agent.deleted_at) == before_agent
    assert (session.closed_at, session.messages.count()) == before_session
    assert Agent.objects.count() == 1
    assert Session.objects.count() == 1


# --- Who may ------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_anonymous_callers_are_refused(route, alices):
    agent, session = alices
    error = _error(_call(Client(), route, agent, session), 401)
    assert error["code"] == "not_authenticated"
    _unchanged(agent, session)


@pytest.mark.parametrize("route", WRITES, ids=lambda r: f"{r[0]} {r[1]}")
def test_a_read_only_key_is_refused_every_write(route, user, scoped_client, alices):
    agent, session = alices
    error = _error(_call(scoped_client(user, "read"), route, agent, session), 403)
    assert error["details"] == {"required_scope": "write"}
    _unchanged(agent, session)


@pytest.mark.parametrize("route", READS, ids=lambda r: f"{r[0]} {r[1]}")
def test_a_read_only_key_reads(route, user, scoped_client, alices):
    agent, session = alices
    response = _call(scoped_client(user, "read"), route, agent, session)
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("route", OBJECT_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_another_users_agent_and_session_do_not_exist_for_you(route, outsider, client_for, alices):
    agent, session = alices
    _error(_call(client_for(outsider), route, agent, session), 404)
    _unchanged(agent, session)


def test_another_users_lists_show_nothing_of_yours(user, outsider, client_for, alices):
    agent, _ = alices
    mallorys = _agent(outsider)
    mallory = client_for(outsider)
    agents = mallory.get(f"{API}/agents").json()["results"]
    assert [a["agent_id"] for a in agents] == [str(mallorys.pk)]
    assert mallory.get(f"{API}/sessions").json()["results"] == []
    assert mallory.get(f"{API}/sessions", {"agent_id": agent.pk}).json()["results"] == []


def test_listing_another_users_agents_by_name_is_forbidden(user, outsider, client_for, alices):
    error = _error(client_for(outsider).get(f"{API}/agents", {"user_id": "alice"}), 403)
    assert error["details"] == {"user_id": "alice"}


def test_spawning_for_another_user_is_forbidden(user, outsider, client_for):
    response = client_for(outsider).post(f"{API}/agents", {"user_id": "alice"}, format="json")
    assert _error(response, 403)["code"] == "forbidden"
    assert not Agent.objects.exists()


def test_your_own_name_is_no_filter_at_all(user, client_for, alices):
    agent, _ = alices
    response = client_for(user).get(f"{API}/agents", {"user_id": "alice"})
    assert [a["agent_id"] for a in response.json()["results"]] == [str(agent.pk)]


def test_operators_see_everyones_agents_and_sessions(
    user, outsider, operator, client_for, alices, scoped_client
):
    agent, session = alices
    other = _agent(outsider)
    other_session = _session(other)
    client = _operator_client(scoped_client, operator)

    agents = client.get(f"{API}/agents").json()["results"]
    assert {a["agent_id"] for a in agents} == {str(agent.pk), str(other.pk)}
    only_alice = client.get(f"{API}/agents", {"user_id": "alice"}).json()["results"]
    assert [a["agent_id"] for a in only_alice] == [str(agent.pk)]
    sessions = client.get(f"{API}/sessions").json()["results"]
    assert {s["session_id"] for s in sessions} == {str(session.pk), str(other_session.pk)}

    assert client.get(f"{API}/agents/{agent.pk}").json()["user_id"] == "alice"
    detail = client.get(f"{API}/sessions/{session.pk}").json()
    assert [m["content"] for m in detail["messages"]] == ["hi", "hello"]


def test_operators_name_only_users_that_exist(operator, client_for, scoped_client):
    error = _error(
        _operator_client(scoped_client, operator).get(f"{API}/agents", {"user_id": "nobody"}), 404
    )
    assert error["details"] == {"user_id": "nobody"}


def test_an_operator_spawns_for_another_user(user, operator, client_for, scoped_client):
    response = _operator_client(scoped_client, operator).post(
        f"{API}/agents", {"user_id": "alice"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert Agent.objects.get().owner == user


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/sessions/{session}/close", None),
        ("post", "/sessions/{session}/messages", {"content": "hi"}),
        ("post", "/sessions/{session}/cancel", None),
        ("post", "/sessions", {"agent_id": "{agent}"}),
    ],
)
def test_operators_read_sessions_but_never_chat_for_others(
    method, path, body, operator, client_for, alices, scoped_client
):
    agent, session = alices
    response = _call(
        _operator_client(scoped_client, operator), (method, path, body), agent, session
    )
    _error(response, 404)
    _unchanged(agent, session)


def test_a_browser_session_needs_its_csrf_token_to_write(user, alices):
    _, session = alices
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    url = f"{API}/sessions/{session.pk}/cancel"

    assert _error(browser.post(url), 403)["message"] == "the CSRF token is missing or wrong"
    token = "a" * 32
    browser.cookies["csrftoken"] = token
    # Past authentication: there is just no turn to cancel.
    assert _error(browser.post(url, headers={"X-CSRFToken": token}), 409)["code"] == "conflict"


def test_a_jwt_authenticates_the_async_views(user, alices):
    _, session = alices
    tokens = APIClient().post(
        f"{API}/auth/login", {"username": "alice", "password": "pw"}, format="json"
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens.json()['access']}")
    assert _error(client.post(f"{API}/sessions/{session.pk}/cancel"), 409)["code"] == "conflict"
    client.credentials(HTTP_AUTHORIZATION="Bearer eyJ.bad.token")
    assert _error(client.post(f"{API}/sessions/{session.pk}/cancel"), 401)


def test_an_unknown_api_key_is_refused_by_the_async_views(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer ac_00000000_nope")
    error = _error(client.post(f"{API}/execute", {"task_description": "hi"}, format="json"), 401)
    assert error["code"] == "not_authenticated"


# --- Validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [({"status": "bogus"}, "status"), ({"q": "x" * 101}, "q"), ({"model": "m" * 101}, "model")],
)
def test_agent_list_filters_are_validated(user, client_for, query, field):
    error = _error(client_for(user).get(f"{API}/agents", query), 400)
    assert error["code"] == "invalid_request"
    assert field in error["details"]


@pytest.mark.parametrize(
    ("query", "field"),
    [({"agent_id": "not-a-uuid"}, "agent_id"), ({"open": "maybe"}, "open")],
)
def test_session_list_filters_are_validated(user, client_for, query, field):
    error = _error(client_for(user).get(f"{API}/sessions", query), 400)
    assert field in error["details"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "agent_id"),
        ({"agent_id": "not-a-uuid"}, "agent_id"),
        ({"agent_id": str(uuid.uuid4()), "title": "t" * 201}, "title"),
    ],
)
def test_session_create_is_validated(user, client_for, body, field):
    error = _error(client_for(user).post(f"{API}/sessions", body, format="json"), 400)
    assert field in error["details"]
    assert not Session.objects.exists()


def test_a_session_with_an_unknown_agent_is_not_found(user, client_for):
    missing = uuid.uuid4()
    response = client_for(user).post(f"{API}/sessions", {"agent_id": str(missing)}, format="json")
    assert _error(response, 404)["details"] == {"agent_id": str(missing)}


@pytest.mark.parametrize(
    ("body", "field"),
    [({"cores": 0}, "cores"), ({"memory": "lots"}, "memory"), ({"name": "n" * 101}, "name")],
)
def test_spawn_is_validated(user, client_for, body, field):
    error = _error(client_for(user).post(f"{API}/agents", body, format="json"), 400)
    assert field in error["details"]
    assert not Agent.objects.exists()


@pytest.mark.parametrize("lines", ["0", "1001", "-1", "ten", ""])
def test_log_lines_must_be_1_to_1000(user, client_for, lines):
    agent = _agent(user)
    error = _error(client_for(user).get(f"{API}/agents/{agent.pk}/logs", {"lines": lines}), 400)
    assert error["details"] == {"lines": [lines]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "content"),
        ({"content": "  \n "}, "content"),
        ({"content": ["hi"]}, "content"),
        ({"content": "hi", "max_tokens": 0}, "max_tokens"),
        ({"content": "hi", "max_tokens": "many"}, "max_tokens"),
        ({"content": "hi", "stream": "maybe"}, "stream"),
    ],
)
def test_a_message_is_validated(user, client_for, alices, body, field):
    _, session = alices
    url = f"{API}/sessions/{session.pk}/messages"
    error = _error(client_for(user).post(url, body, format="json"), 400)
    assert error["code"] == "invalid_request"
    assert field in error["details"]
    assert session.messages.count() == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [("{not json", "malformed_body"), ("[1, 2]", "invalid_request"), ('"hi"', "invalid_request")],
)
def test_a_message_body_must_be_a_json_object(user, client_for, alices, body, code):
    _, session = alices
    url = f"{API}/sessions/{session.pk}/messages"
    response = client_for(user).post(url, body, content_type="application/json")
    assert _error(response, 400)["code"] == code  # as on DRF routes: unparsable, then invalid


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "task_description"),
        ({"task_description": "x" * 5001}, "task_description"),
        ({"task_description": "   "}, "task_description"),
        ({"task_description": "hi", "agent_id": "not-a-uuid"}, "agent_id"),
        ({"task_description": "hi", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_a_task_is_validated(user, client_for, body, field):
    _agent(user)
    error = _error(client_for(user).post(f"{API}/execute", body, format="json"), 400)
    assert field in error["details"]
    assert not Session.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_task_of_5000_characters_is_accepted(user, client_for):
    # Valid, so it goes on to look for a running agent, of which there is none, and no pool of
    # the user's to wake: the autoscaler reads the waiting demand once committed, so commit.
    body = {"task_description": "x" * 5000, "context": {"any": ["json", 1, None]}}
    response = client_for(user).post(f"{API}/execute", body, format="json")
    assert _error(response, 409)["code"] == "agent_not_running"


@pytest.mark.parametrize(
    "path", ["/execute", "/sessions/{session}/messages", "/sessions/{session}/cancel"]
)
def test_the_async_routes_take_only_post(user, client_for, alices, path):
    _, session = alices
    response = client_for(user).get(API + path.format(session=session.pk))
    assert _error(response, 405)["code"] == "method_not_allowed"


# --- Agents -------------------------------------------------------------------------------------


def test_spawn_records_a_pending_agent(user, client_for, django_capture_on_commit_callbacks):
    body = {"name": "a", "cores": 2, "memory": 1024, "system_prompt": "Be brief."}
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(user).post(f"{API}/agents", body, format="json")
    assert response.status_code == 201, response.content
    spawned = response.json()
    assert (spawned["status"], spawned["user_id"], spawned["name"]) == ("pending", "alice", "a")
    assert (spawned["cores"], spawned["memory"]) == (2, 1024)
    assert len(callbacks) == 1  # the boot, queued after commit


def test_a_retried_spawn_with_the_same_idempotency_key_returns_the_first_agent(user, client_for):
    client = client_for(user)
    headers = {"Idempotency-Key": "spawn-once"}
    first = client.post(f"{API}/agents", {"name": "a"}, format="json", headers=headers)
    again = client.post(f"{API}/agents", {"name": "a"}, format="json", headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Agent.objects.count() == 1


def test_get_answers_the_agent(user, client_for, alices):
    agent, _ = alices
    body = client_for(user).get(f"{API}/agents/{agent.pk}").json()
    assert (body["agent_id"], body["status"], body["name"]) == (str(agent.pk), "running", "helper")


@pytest.mark.parametrize("agent_id", [uuid.uuid4(), "-" * 36, "z" * 36])
def test_get_of_an_unknown_or_malformed_id_is_not_found(user, client_for, agent_id):
    _error(client_for(user).get(f"{API}/agents/{agent_id}"), 404)


def test_delete_marks_the_agent_deleted_and_hides_it(user, client_for, alices):
    agent, _ = alices
    client = client_for(user)
    response = client.delete(f"{API}/agents/{agent.pk}")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "stopping"
    agent.refresh_from_db()
    assert agent.deleted_at is not None
    _error(client.get(f"{API}/agents/{agent.pk}"), 404)
    _error(client.delete(f"{API}/agents/{agent.pk}"), 404)
    assert client.get(f"{API}/agents").json()["results"] == []


def test_a_deleted_agents_sessions_take_no_messages(user, client_for, alices):
    agent, session = alices
    Agent.objects.filter(pk=agent.pk).update(deleted_at=timezone.now())
    url = f"{API}/sessions/{session.pk}/messages"
    _error(client_for(user).post(url, {"content": "hi"}, format="json"), 404)
    body = {"agent_id": str(agent.pk)}
    _error(client_for(user).post(f"{API}/sessions", body, format="json"), 404)


@pytest.mark.parametrize(
    ("action", "before", "after"),
    [
        ("stop", "running", "stopping"),
        ("stop", "pending", "stopping"),
        ("stop", "starting", "stopping"),
        ("start", "stopped", "pending"),
        ("start", "failed", "pending"),
        ("restart", "running", "stopping"),
        ("restart", "stopped", "stopping"),
        ("restart", "failed", "stopping"),
    ],
)
def test_lifecycle_actions_change_the_state(
    user, client_for, django_capture_on_commit_callbacks, action, before, after
):
    agent = _agent(user, status=before)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(user).post(f"{API}/agents/{agent.pk}/{action}")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == after
    agent.refresh_from_db()
    assert agent.status == after
    assert len(callbacks) == 1  # the sandbox work, queued after commit


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("stop", "stopped"),
        ("stop", "failed"),
        ("stop", "stopping"),
        ("start", "running"),
        ("start", "pending"),
        ("start", "starting"),
        ("start", "stopping"),
        ("restart", "stopping"),
    ],
)
def test_lifecycle_actions_that_do_not_fit_the_state_are_conflicts(
    user, client_for, action, status
):
    agent = _agent(user, status=status)
    error = _error(client_for(user).post(f"{API}/agents/{agent.pk}/{action}"), 409)
    assert error["code"] == "agent_not_running"
    assert error["details"]["status"] == status
    agent.refresh_from_db()
    assert agent.status == status


@pytest.mark.parametrize("sandbox_id", ["", "never-created"])
def test_logs_of_an_agent_without_a_sandbox_are_empty(user, client_for, sandbox_id):
    agent = _agent(user, status="stopped", sandbox_id=sandbox_id)
    response = client_for(user).get(f"{API}/agents/{agent.pk}/logs", {"lines": 5})
    assert response.status_code == 200, response.content
    assert response.json() == {"agent_id": str(agent.pk), "status": "stopped", "log": ""}


# --- Agent lists --------------------------------------------------------------------------------


def _dated(rows: list, minutes: int = 1) -> None:
    """Give ``rows`` distinct creation times, the first the oldest."""
    start = timezone.now() - timedelta(hours=1)
    for n, row in enumerate(rows):
        type(row).objects.filter(pk=row.pk).update(created_at=start + timedelta(minutes=n))


def test_agent_filters(user, client_for):
    running = _agent(user, name="Alpha one", model="claude-sonnet-5-5")
    stopped = _agent(user, name="beta", status="stopped", model="claude-haiku-5")
    other = _agent(user, name="ALPHA two", status="failed", model="claude-haiku-5")
    Agent.objects.create(owner=user, model="m", name="alpha deleted", deleted_at=timezone.now())
    _dated([running, stopped, other])
    client = client_for(user)

    def ids(**query) -> list[str]:
        response = client.get(f"{API}/agents", query)
        assert response.status_code == 200, response.content
        return [a["agent_id"] for a in response.json()["results"]]

    assert ids() == [str(other.pk), str(stopped.pk), str(running.pk)]  # newest first
    assert ids(status="stopped") == [str(stopped.pk)]
    assert ids(model="claude-haiku-5") == [str(other.pk), str(stopped.pk)]
    assert ids(q="alpha") == [str(other.pk), str(running.pk)]
    assert ids(q="alpha", status="running") == [str(running.pk)]
    assert ids(q="gamma") == []


def _pages(client: APIClient, url: str, id_field: str, **query) -> list[list[str]]:
    """The ids on each page of the list at ``url``, following its ``next`` links."""
    pages, response = [], client.get(url, query)
    while True:
        assert response.status_code == 200, response.content
        body = response.json()
        pages.append([row[id_field] for row in body["results"]])
        if body["next"] is None:
            return pages
        assert body["next"].startswith("http://testserver/api/v1/")
        response = client.get(body["next"])


def _flat(pages: list[list[str]]) -> list[str]:
    return [row for page in pages for row in page]


def test_agents_page_by_cursor_newest_first(user, client_for):
    agents = [_agent(user, name=f"a{n}") for n in range(5)]
    _dated(agents)
    first = client_for(user).get(f"{API}/agents", {"page_size": 2}).json()
    assert set(first) == {"next", "previous", "results"}
    assert first["previous"] is None
    pages = _pages(client_for(user), f"{API}/agents", "agent_id", page_size=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert _flat(pages) == [str(a.pk) for a in reversed(agents)]


def test_agent_list_filters_hold_across_pages(user, client_for):
    agents = [_agent(user, status="running" if n % 2 else "stopped") for n in range(6)]
    _dated(agents)
    pages = _pages(client_for(user), f"{API}/agents", "agent_id", page_size=2, status="running")
    assert _flat(pages) == [str(a.pk) for a in reversed(agents) if a.status == "running"]


def _query_count(client: APIClient, url: str) -> int:
    assert client.get(url).status_code == 200  # warm: the key's last-used stamp, the quota row
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries.captured_queries)


def test_agent_list_query_count_does_not_grow_with_agents(
    user, outsider, operator, client_for, django_assert_num_queries, scoped_client
):
    for owner in (user, outsider, user):
        _agent(owner)
    client = _operator_client(scoped_client, operator)
    queries = _query_count(client, f"{API}/agents")
    for n in range(27):
        _agent(user if n % 2 else outsider, name=f"more {n}")
    with django_assert_num_queries(queries):
        response = client.get(f"{API}/agents")
    assert len(response.json()["results"]) == 30
    assert {a["user_id"] for a in response.json()["results"]} == {"alice", "mallory"}


# --- Sessions -----------------------------------------------------------------------------------


def test_create_a_session_with_your_agent(user, client_for, alices):
    agent, _ = alices
    response = client_for(user).post(
        f"{API}/sessions", {"agent_id": str(agent.pk), "title": "Plans"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    session = Session.objects.get(pk=body["session_id"])
    assert (session.agent, session.user, session.title) == (agent, user, "Plans")
    assert (body["agent_id"], body["user_id"], body["message_count"]) == (
        str(agent.pk),
        user.pk,
        0,
    )
    assert body["closed_at"] is None


def test_session_detail_has_its_messages_in_order(user, client_for, alices):
    _, session = alices
    late = _message(session, "user", "and then?")
    early = _message(session, "assistant", "before all", cost_usd=Decimal("0.25"))
    Message.objects.filter(pk=early.pk).update(created_at=timezone.now() - timedelta(days=1))
    Message.objects.filter(pk=late.pk).update(created_at=timezone.now() + timedelta(days=1))

    body = client_for(user).get(f"{API}/sessions/{session.pk}").json()
    assert body["session_id"] == str(session.pk)
    assert body["message_count"] == 4
    contents = [m["content"] for m in body["messages"]]
    assert contents == ["before all", "hi", "hello", "and then?"]
    assert body["messages"][0]["cost_usd"] == "0.25000000"
    hello = body["messages"][2]
    assert (hello["role"], hello["input_tokens"], hello["output_tokens"]) == ("assistant", 3, 2)


def test_session_filters(user, client_for, alices):
    agent, first = alices
    other_agent = _agent(user)
    second = _session(other_agent, title="Second thoughts")
    closed = _session(agent, title="old", closed_at=timezone.now())
    _dated([first, second, closed])
    client = client_for(user)

    def ids(**query) -> list[str]:
        response = client.get(f"{API}/sessions", query)
        assert response.status_code == 200, response.content
        return [s["session_id"] for s in response.json()["results"]]

    assert ids() == [str(closed.pk), str(second.pk), str(first.pk)]
    assert ids(agent_id=agent.pk) == [str(closed.pk), str(first.pk)]
    assert ids(open="true") == [str(second.pk), str(first.pk)]
    assert ids(open="false") == [str(closed.pk)]
    assert ids(q="THOUGHT") == [str(second.pk)]
    assert ids(agent_id=agent.pk, open="true") == [str(first.pk)]
    assert ids(agent_id=uuid.uuid4()) == []


def test_sessions_page_by_cursor_with_their_message_counts(user, client_for, alices):
    agent, first = alices
    sessions = [first] + [_session(agent, title=f"s{n}") for n in range(4)]
    _dated(sessions)
    pages = _pages(client_for(user), f"{API}/sessions", "session_id", page_size=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert _flat(pages) == [str(s.pk) for s in reversed(sessions)]
    last = client_for(user).get(f"{API}/sessions", {"q": "first"}).json()["results"]
    assert last[0]["message_count"] == 2


def test_session_list_query_count_does_not_grow_with_sessions(
    user, operator, outsider, client_for, django_assert_num_queries, scoped_client
):
    agents = [_agent(user), _agent(outsider)]
    for n in range(3):
        _message(_session(agents[n % 2]), "user", "hi")
    client = _operator_client(scoped_client, operator)
    queries = _query_count(client, f"{API}/sessions")
    for n in range(27):
        session = _session(agents[n % 2], title=f"more {n}")
        _message(session, "user", "hi")
        _message(session, "assistant", "hello")
    with django_assert_num_queries(queries):
        response = client.get(f"{API}/sessions")
    results = response.json()["results"]
    assert len(results) == 30
    assert sorted(s["message_count"] for s in results) == [1] * 3 + [2] * 27


def test_close_is_idempotent_and_a_closed_session_takes_no_more_turns(user, client_for, alices):
    _, session = alices
    client = client_for(user)
    first = client.post(f"{API}/sessions/{session.pk}/close")
    assert first.status_code == 200, first.content
    assert first.json()["closed_at"] is not None
    assert first.json()["message_count"] == 2
    again = client.post(f"{API}/sessions/{session.pk}/close")
    assert again.status_code == 200
    assert again.json()["closed_at"] == first.json()["closed_at"]

    url = f"{API}/sessions/{session.pk}/messages"
    error = _error(client.post(url, {"content": "hi"}, format="json"), 409)
    assert error["details"] == {"session_id": str(session.pk)}
    _error(client.post(f"{API}/sessions/{session.pk}/cancel"), 409)
    assert session.messages.count() == 2


# --- Turns and tasks that go no further than the database ---------------------------------------


def test_cancel_with_no_turn_in_flight_is_a_conflict(user, client_for, alices):
    _, session = alices
    error = _error(client_for(user).post(f"{API}/sessions/{session.pk}/cancel"), 409)
    assert error["code"] == "conflict"


def test_a_turn_with_a_stopped_agent_is_refused(user, client_for, alices):
    agent, session = alices
    Agent.objects.filter(pk=agent.pk).update(status="stopped")
    url = f"{API}/sessions/{session.pk}/messages"
    error = _error(client_for(user).post(url, {"content": "hi"}, format="json"), 409)
    assert (error["code"], error["details"]["status"]) == ("agent_not_running", "stopped")
    assert session.messages.count() == 2


@pytest.mark.django_db(transaction=True)  # the autoscaler reads the demand once committed
def test_a_task_with_no_running_agent_is_refused(user, outsider, client_for):
    _agent(user, status="stopped")
    _agent(outsider)  # running, but not alice's
    response = client_for(user).post(f"{API}/execute", {"task_description": "hi"}, format="json")
    error = _error(response, 409)
    assert error["code"] == "agent_not_running"
    assert "no scaling rule of yours wakes one" in error["message"]
    assert not Session.objects.exists()
    assert not AgentDemand.objects.exists()


def test_a_task_for_a_named_agent_that_is_stopped_is_refused(user, client_for):
    agent = _agent(user, status="stopped")
    body = {"task_description": "hi", "agent_id": str(agent.pk)}
    error = _error(client_for(user).post(f"{API}/execute", body, format="json"), 409)
    assert error["details"] == {"agent_id": str(agent.pk), "status": "stopped"}
    assert not Session.objects.exists()
