"""``/api/v1/`` sessions, turns and one-shot tasks through every layer, for real.

As in ``test_thin_path.py``: the console is served over ASGI, the agent boots through the Celery
task (run eagerly) and vmdriver's process backend as a real ``python -m agents.runtime``, and
Claude is the fake Anthropic server, reached by the gateway.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import async_to_sync

from agents.models import Agent, AgentDemand, Message, Session
from agents.services.live import live_claimed, live_replay
from console.models import Quota, UsageRecord
from scaling.models import ScalingRule
from tests.fakes.anthropic import Hang, Text, count_tokens
from tests.polling import eventually

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1"


@pytest.fixture
def alice(user, api_key, live_console):
    """A client of alice's; ``alice.second()`` is another, on connections of its own."""

    def connect() -> httpx.Client:
        return httpx.Client(
            base_url=f"{live_console}{API}",
            timeout=30,
            headers={"Authorization": f"Bearer {api_key(user)}"},
        )

    client = connect()
    client.second = connect
    yield client
    client.close()


@pytest.fixture
def slow_anthropic(fake_anthropic, monkeypatch):
    """The fake Anthropic, pausing between streamed words."""
    monkeypatch.setattr(fake_anthropic, "chunk_delay", 0.2)
    return fake_anthropic


def _spawn(client: httpx.Client) -> str:
    response = client.post("/agents", json={"name": "live", "memory": 256})
    assert response.status_code == 201, response.text
    agent_id = response.json()["agent_id"]
    agent = client.get(f"/agents/{agent_id}").json()
    assert agent["status"] == "running", agent["last_error"]
    return agent_id


def _session(client: httpx.Client, agent_id: str, title: str = "live") -> str:
    response = client.post("/sessions", json={"agent_id": agent_id, "title": title})
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


@pytest.fixture
def session_id(alice) -> str:
    return _session(alice, _spawn(alice))


def _sse(lines) -> Iterator[tuple[str, dict]]:
    """The ``(event, data)`` pairs of an SSE stream's lines, as they arrive."""
    name = ""
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:])


def _events(lines) -> list[tuple[str, dict]]:
    return list(_sse(lines))


def test_a_turn_answers_from_claude_and_the_session_shows_both_sides(
    alice, session_id, fake_anthropic
):
    response = alice.post(
        f"/sessions/{session_id}/messages", json={"content": "Hello there", "max_tokens": 256}
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert (reply["session_id"], reply["content"], reply["status"]) == (
        session_id,
        "Echo: Hello there",
        "completed",
    )
    assert fake_anthropic.requests[-1].body["max_tokens"] == 256
    record = UsageRecord.objects.get()
    assert str(record.session_id) == session_id
    assert reply["usage"] == {
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "total_tokens": record.input_tokens + record.output_tokens,
    }
    assert record.output_tokens == count_tokens("Echo: Hello there")
    assert Decimal(reply["cost_usd"]) == record.cost_usd > 0

    detail = alice.get(f"/sessions/{session_id}").json()
    assert detail["message_count"] == 2
    user_message, answer = detail["messages"]
    assert (user_message["role"], user_message["content"]) == ("user", "Hello there")
    assert (answer["role"], answer["content"]) == ("assistant", "Echo: Hello there")
    assert (answer["input_tokens"], answer["output_tokens"]) == (
        record.input_tokens,
        record.output_tokens,
    )
    assert Decimal(answer["cost_usd"]) == record.cost_usd
    # Done: there is nothing left to cancel.
    assert alice.post(f"/sessions/{session_id}/cancel").status_code == 409


def test_a_streamed_turn_sends_deltas_then_done(alice, session_id):
    body = {"content": "Stream me a few words", "stream": True}
    with alice.stream("POST", f"/sessions/{session_id}/messages", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.iter_lines())
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"delta"} and len(names) > 2
    done = events[-1][1]
    assert done["content"] == "Echo: Stream me a few words"
    assert "".join(data["text"] for _, data in events[:-1]) == done["content"]
    assert (done["session_id"], done["status"]) == (session_id, "completed")
    assert Decimal(done["cost_usd"]) == UsageRecord.objects.get().cost_usd > 0
    contents = [m["content"] for m in alice.get(f"/sessions/{session_id}").json()["messages"]]
    assert contents == ["Stream me a few words", "Echo: Stream me a few words"]


def test_cancelling_a_streamed_turn_stops_it_and_charges_what_was_used(
    alice, session_id, slow_anthropic
):
    words = " ".join(f"word{n}" for n in range(50))  # 50 deltas, 0.2 s apart: 10 s in all
    slow_anthropic.enqueue(Text(words))
    body = {"content": "Tell me a long story", "stream": True}
    with alice.stream("POST", f"/sessions/{session_id}/messages", json=body) as response:
        assert response.status_code == 200
        events = _sse(response.iter_lines())
        received = [next(events)]
        with alice.second() as other:
            cancel = other.post(f"/sessions/{session_id}/cancel")
        cancelled_at = time.monotonic()
        assert cancel.status_code == 202, cancel.text
        assert cancel.json() == {"session_id": session_id, "cancelled": True}
        received += list(events)
        ended_in = time.monotonic() - cancelled_at
    names = [name for name, _ in received]
    assert names[-1] == "cancelled" and set(names[:-1]) == {"delta"}, names
    assert received[-1][1] == {"session_id": session_id}
    assert ended_in < 2, f"the stream took {ended_in:.1f} s to end"
    assert len(names) - 1 < 25  # nowhere near the 50 words

    # Anthropic's call ended early, and the gateway charged the words it had sent.
    eventually(lambda: slow_anthropic.disconnects == 1, failing="timed out")
    record = eventually(
        lambda: UsageRecord.objects.filter(session_id=session_id).first(), failing="timed out"
    )
    assert 0 < record.output_tokens < count_tokens(words)
    assert record.cost_usd > 0
    # Nothing of the stopped turn is recorded, and the turn is no longer in flight.
    assert not Message.objects.filter(session_id=session_id).exists()
    assert alice.post(f"/sessions/{session_id}/cancel").status_code == 409

    # The session goes on: the stopped turn left no trace in the runtime's history either.
    slow_anthropic.chunk_delay = 0
    response = alice.post(f"/sessions/{session_id}/messages", json={"content": "Short, then"})
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "Echo: Short, then"
    sent = slow_anthropic.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user"]
    assert Message.objects.filter(session_id=session_id).count() == 2


def test_cancelling_a_json_turn_answers_409_and_ends_anthropics_call(
    alice, session_id, fake_anthropic
):
    fake_anthropic.enqueue(Hang(30))
    answers: list[httpx.Response] = []
    turn = threading.Thread(
        target=lambda: answers.append(
            alice.post(f"/sessions/{session_id}/messages", json={"content": "Take your time"})
        )
    )
    turn.start()
    try:
        eventually(lambda: fake_anthropic.requests, failing="timed out")
        with alice.second() as other:
            cancel = other.post(f"/sessions/{session_id}/cancel")
        assert cancel.status_code == 202, cancel.text
    finally:
        turn.join(timeout=10)
    assert not turn.is_alive(), "the cancelled turn did not answer"
    error = answers[0].json()["error"]
    assert answers[0].status_code == 409
    assert (error["code"], error["details"]) == ("turn_cancelled", {"session_id": session_id})
    eventually(lambda: fake_anthropic.disconnects == 1, failing="timed out")
    assert not Message.objects.filter(session_id=session_id).exists()


def test_a_retried_turn_with_the_same_idempotency_key_gets_the_first_answer(
    alice, session_id, fake_anthropic
):
    url, body = f"/sessions/{session_id}/messages", {"content": "Only once"}
    headers = {"Idempotency-Key": "turn-1"}
    first = alice.post(url, json=body, headers=headers)
    again = alice.post(url, json=body, headers=headers)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    calls = [r for r in fake_anthropic.requests if r.path == "/v1/messages"]
    assert len(calls) == 1
    assert Message.objects.filter(session_id=session_id).count() == 2
    assert UsageRecord.objects.count() == 1


def test_execute_runs_a_task_in_a_session_of_its_own_and_closes_it(alice, fake_anthropic):
    agent_id = _spawn(alice)
    body = {"task_description": "Add these", "context": {"numbers": [1, 2]}, "max_tokens": 300}
    response = alice.post("/execute", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"result", "metadata", "processing_time_ms"}
    context = json.dumps({"numbers": [1, 2]}, indent=2)
    assert answer["result"] == f"Echo: Add these\n\nContext:\n{context}"
    metadata = answer["metadata"]
    assert set(metadata) == {
        "agent_id",
        "session_id",
        "model",
        "tokens_used",
        "cost_usd",
        "timestamp",
    }
    record = UsageRecord.objects.get()
    assert (metadata["agent_id"], metadata["model"]) == (agent_id, "claude-sonnet-5-5")
    assert metadata["session_id"] == str(record.session_id)
    assert metadata["tokens_used"] == record.input_tokens + record.output_tokens
    assert Decimal(metadata["cost_usd"]) == record.cost_usd > 0
    assert datetime.fromisoformat(metadata["timestamp"]).tzinfo is not None
    assert isinstance(answer["processing_time_ms"], float) and answer["processing_time_ms"] >= 0
    assert fake_anthropic.requests[-1].body["max_tokens"] == 300

    session = Session.objects.get(pk=metadata["session_id"])
    assert session.closed_at is not None
    assert session.messages.count() == 2
    closed = alice.get("/sessions", params={"open": "false"}).json()["results"]
    assert [s["session_id"] for s in closed] == [metadata["session_id"]]


def test_execute_with_no_running_agent_is_a_conflict(alice, fake_anthropic):
    agent_id = _spawn(alice)
    stopped = alice.post(f"/agents/{agent_id}/stop")
    assert stopped.status_code == 200, stopped.text
    assert alice.get(f"/agents/{agent_id}").json()["status"] == "stopped"

    response = alice.post("/execute", json={"task_description": "Anyone there?"})
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "agent_not_running"
    assert not Session.objects.exists()
    assert not fake_anthropic.requests
    assert Agent.objects.get(pk=agent_id).status == "stopped"


def test_execute_for_a_pool_at_zero_wakes_it_and_is_answered(alice, user, fake_anthropic):
    rule = ScalingRule.objects.create(
        name="alice-pool",
        owner=user,
        model="claude-sonnet-5-5",
        min_agents=0,
        max_agents=2,
        scale_up_cooldown_seconds=600,
    )
    assert not Agent.objects.exists()

    response = alice.post("/execute", json={"task_description": "Wake up"})

    assert response.status_code == 200, response.text
    assert response.json()["result"] == "Echo: Wake up"
    agent = Agent.objects.get(pk=response.json()["metadata"]["agent_id"])
    assert (agent.owner, agent.model, agent.name, agent.status) == (
        user,
        "claude-sonnet-5-5",
        "alice-pool",
        "running",
    )
    (decision,) = rule.decisions.all()
    assert (decision.action, decision.current_agents, decision.desired_agents) == (
        "scale_up",
        0,
        1,
    )
    assert "1 request waiting for an agent" in decision.reason
    assert "waking it (activation)" in decision.reason
    assert not AgentDemand.objects.exists()


def test_execute_for_a_pool_that_does_not_wake_in_time_is_refused_as_waking(
    alice, user, fake_anthropic, settings
):
    settings.AGENT_BOOT_WAIT_SECONDS = 0.5
    Quota.objects.update_or_create(user=user, defaults={"max_agents": 0})
    ScalingRule.objects.create(
        name="alice-pool", owner=user, model="claude-sonnet-5-5", min_agents=0, max_agents=2
    )

    response = alice.post("/execute", json={"task_description": "Anyone there?"})

    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "pool_waking"
    assert error["details"] == {"pool": "alice-pool", "waited_seconds": 0.5, "retry_after": 5}
    assert "the pool 'alice-pool' is waking" in error["message"]
    assert response.headers["Retry-After"] == "5"
    assert not Session.objects.exists()
    assert not fake_anthropic.requests
    assert not AgentDemand.objects.exists()


def test_the_logs_of_a_running_agent_are_its_runtimes(alice):
    agent_id = _spawn(alice)
    response = alice.get(f"/agents/{agent_id}/logs", params={"lines": 3})
    assert response.status_code == 200, response.text
    logs = response.json()
    assert (logs["agent_id"], logs["status"]) == (agent_id, "running")
    assert len(logs["log"].splitlines()) <= 3


def test_a_stream_stopped_before_its_first_word_ends_with_cancelled(
    alice, session_id, fake_anthropic
):
    fake_anthropic.enqueue(Hang(30))  # Claude says nothing yet
    received: list[tuple[str, dict]] = []
    body = {"content": "Think hard", "stream": True}

    def ask() -> None:
        with alice.stream("POST", f"/sessions/{session_id}/messages", json=body) as response:
            assert response.status_code == 200
            received.extend(_sse(response.iter_lines()))

    turn = threading.Thread(target=ask)
    turn.start()
    try:
        eventually(lambda: fake_anthropic.requests, failing="timed out")
        with alice.second() as other:
            assert other.post(f"/sessions/{session_id}/cancel").status_code == 202
    finally:
        turn.join(timeout=10)
    assert not turn.is_alive(), "the stopped stream did not end"
    assert received == [("cancelled", {"session_id": session_id})]
    eventually(lambda: fake_anthropic.disconnects == 1, failing="timed out")


def _contents(session_id: str) -> list[str]:
    messages = Message.objects.filter(session_id=session_id).order_by("created_at", "pk")
    return list(messages.values_list("content", flat=True))


def _log_types(session_id: str) -> list[str]:
    """The types of the session's events, as a page that follows the session received them."""
    return [e["type"] for e in async_to_sync(live_replay)(session_id, after=0).events]


def test_a_second_turn_in_a_session_waits_for_the_first(alice, session_id, fake_anthropic):
    release = threading.Event()
    fake_anthropic.enqueue(Hang(30, release=release))
    answers: dict[str, httpx.Response] = {}

    def send(client: httpx.Client, content: str) -> None:
        answers[content] = client.post(
            f"/sessions/{session_id}/messages", json={"content": content}
        )

    first = threading.Thread(target=send, args=(alice, "First"))
    first.start()
    with alice.second() as other:
        try:
            eventually(lambda: fake_anthropic.requests, failing="timed out")
            second = threading.Thread(target=send, args=(other, "Second"))
            second.start()
            time.sleep(0.5)
            assert not answers, "a turn answered while the first was still being written"
            assert len([r for r in fake_anthropic.requests if r.path == "/v1/messages"]) == 1
        finally:
            release.set()
            first.join(timeout=10)
            second.join(timeout=10)
    assert answers["First"].status_code == answers["Second"].status_code == 200
    assert answers["Second"].json()["content"] == "Echo: Second"
    assert _contents(session_id) == ["First", "Echo: First", "Second", "Echo: Second"]
    sent = fake_anthropic.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]


def test_a_turn_that_waits_past_the_bound_is_refused_clearly(
    alice, session_id, fake_anthropic, settings
):
    settings.CHAT_TURN_QUEUE_SECONDS = 0.3
    release = threading.Event()
    fake_anthropic.enqueue(Hang(30, release=release))
    first: list[httpx.Response] = []
    turn = threading.Thread(
        target=lambda: first.append(
            alice.post(f"/sessions/{session_id}/messages", json={"content": "First"})
        )
    )
    turn.start()
    try:
        eventually(lambda: fake_anthropic.requests, failing="timed out")
        with alice.second() as other:
            body = {"content": "Second", "stream": True}
            second = other.post(f"/sessions/{session_id}/messages", json=body)
    finally:
        release.set()
        turn.join(timeout=10)
    assert second.status_code == 409, second.text
    error = second.json()["error"]
    assert error["code"] == "turn_queue_timeout"
    assert error["details"] == {"session_id": session_id, "waited_seconds": 0.3}
    assert first[0].status_code == 200, first[0].text
    assert _contents(session_id) == ["First", "Echo: First"]


def test_an_execute_turn_is_live_and_a_cancel_from_another_request_stops_it(alice, fake_anthropic):
    _spawn(alice)
    fake_anthropic.enqueue(Hang(30))
    answers: list[httpx.Response] = []
    turn = threading.Thread(
        target=lambda: answers.append(alice.post("/execute", json={"task_description": "Slow"}))
    )
    turn.start()
    try:
        eventually(lambda: fake_anthropic.requests, failing="timed out")
        session_id = str(Session.objects.get().pk)
        assert async_to_sync(live_claimed)(session_id), "the task's turn holds no claim"
        with alice.second() as other:
            assert other.post(f"/sessions/{session_id}/cancel").status_code == 202
    finally:
        turn.join(timeout=10)
    assert not turn.is_alive(), "the cancelled task did not answer"
    assert answers[0].status_code == 409, answers[0].text
    assert answers[0].json()["error"]["code"] == "turn_cancelled"
    assert Session.objects.get(pk=session_id).closed_at is not None
    assert _log_types(session_id) == ["turn_started", "cancelled"]
    eventually(lambda: fake_anthropic.disconnects == 1, failing="timed out")


def test_an_execute_turn_is_broadcast_to_the_sessions_followers(alice, fake_anthropic):
    _spawn(alice)
    response = alice.post("/execute", json={"task_description": "Say a few words"})
    assert response.status_code == 200, response.text
    types = _log_types(response.json()["metadata"]["session_id"])
    assert types[0] == "turn_started" and types[-1] == "done"
    assert set(types[1:-1]) == {"delta"}


def test_a_retried_stream_with_the_same_idempotency_key_follows_the_first_turn(
    alice, session_id, fake_anthropic
):
    url = f"/sessions/{session_id}/messages"
    body, headers = {"content": "Only once, streamed", "stream": True}, {"Idempotency-Key": "s-1"}
    with alice.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200
        first = _events(response.iter_lines())
    with alice.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["Idempotent-Replayed"] == "true"
        again = _events(response.iter_lines())
    assert again == first
    assert first[-1][0] == "done"
    assert first[-1][1]["content"] == "Echo: Only once, streamed"
    calls = [r for r in fake_anthropic.requests if r.path == "/v1/messages"]
    assert len(calls) == 1
    assert Message.objects.filter(session_id=session_id).count() == 2


def test_a_refusal_before_the_first_word_keeps_its_status(alice, session_id, fake_anthropic):
    Agent.objects.filter(sessions__pk=session_id).update(status=Agent.Status.STOPPED)
    body = {"content": "Anyone there?", "stream": True}
    response = alice.post(f"/sessions/{session_id}/messages", json=body)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "agent_not_running"
