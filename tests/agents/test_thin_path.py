"""The thin path through every layer, for real: spawn → sandboxed runtime → gateway → Claude.

The console is served over ASGI; the agent boots through the Celery task (run eagerly)
and vmdriver's process backend as a real ``python -m agents.runtime``; Claude is the fake
Anthropic server, reached by the gateway through the real ``anthropic`` SDK.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import async_to_sync

from agents.models import Agent, Message, Session
from agents.sandbox import runtime_client_sync
from agents.services.live import live_claimed, live_replay
from console.models import UsageHourly, UsageRecord
from tests.conftest import PLATFORM_KEY
from tests.fakes.anthropic import Error, Hang, Text, _input_tokens, count_tokens
from tests.polling import eventually

pytestmark = pytest.mark.django_db(transaction=True)

ALICES_KEY = "sk-ant-api03-alices-own-0123456789abcdef0123456789"


@pytest.fixture
def alice(user, api_key, live_console):
    return httpx.Client(
        base_url=live_console, timeout=30, headers={"Authorization": f"Bearer {api_key(user)}"}
    )


def _spawn(client: httpx.Client, **body) -> dict:
    response = client.post("/v1/agents/spawn", json={"user_id": "alice", **body})
    assert response.status_code == 201, response.text
    return response.json()


def test_spawn_then_chat_answers_from_claude_and_ledgers_the_cost(alice, fake_anthropic, user):
    spawned = _spawn(alice, cores=1, memory=256, max_concurrent=5, system_prompt="Be brief.")
    agent = Agent.objects.get(pk=spawned["agent_id"])
    assert agent.status == "running", agent.last_error

    chat_url = f"{spawned['url']}/v1/agent/chat"
    response = alice.post(
        chat_url,
        json={"prompt": "Hello there", "user_id": "alice", "max_tokens": 256, "stream": False},
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["content"] == "Echo: Hello there"
    assert reply["status"] == "completed"
    # The runtime offers Claude its tools, so their definitions count as input too.
    expected_input = _input_tokens(fake_anthropic.requests[-1].body)
    assert expected_input > count_tokens("Be brief.\nHello there")
    expected_output = count_tokens("Echo: Hello there")
    assert reply["usage"] == {
        "input_tokens": expected_input,
        "output_tokens": expected_output,
        "total_tokens": expected_input + expected_output,
    }

    upstream = fake_anthropic.requests[-1]
    assert upstream.api_key == PLATFORM_KEY  # the real key is added by the gateway, not the agent
    assert upstream.body["system"] == [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
    ]

    record = UsageRecord.objects.get()
    assert (record.user, record.agent_id, str(record.session_id)) == (
        user,
        agent.pk,
        reply["session_id"],
    )
    # The default model, claude-sonnet-5-5, lists at $2 in and $10 out per million tokens.
    expected_cost = (Decimal(expected_input) * 2 + Decimal(expected_output) * 10) / 1_000_000
    assert record.cost_usd == expected_cost
    assert record.request_id.startswith("req_")
    hourly = UsageHourly.objects.get()
    assert (hourly.user, hourly.agent_id, hourly.requests) == (user, str(agent.pk), 1)
    assert hourly.cost_usd == expected_cost

    assistant = Message.objects.get(session_id=reply["session_id"], role="assistant")
    assert (assistant.content, assistant.cost_usd) == ("Echo: Hello there", expected_cost)


def test_a_session_keeps_its_history_across_turns(alice, fake_anthropic):
    spawned = _spawn(alice)
    chat_url = f"{spawned['url']}/v1/agent/chat"
    first = alice.post(chat_url, json={"prompt": "one"}).json()
    second = alice.post(chat_url, json={"prompt": "two", "session_id": first["session_id"]})
    assert second.status_code == 200, second.text
    assert second.json()["session_id"] == first["session_id"]
    sent = fake_anthropic.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert Message.objects.filter(session_id=first["session_id"]).count() == 4


def test_the_agents_own_key_is_used_and_never_returned(alice, fake_anthropic):
    spawned = _spawn(alice, anthropic_api_key=ALICES_KEY)
    assert ALICES_KEY not in str(spawned)
    alice.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "hi"}).raise_for_status()
    assert fake_anthropic.requests[-1].api_key == ALICES_KEY
    listed = alice.get("/v1/agents/list").text
    assert ALICES_KEY not in listed


def test_an_upstream_refusal_reaches_the_client_and_nothing_is_half_written(alice, fake_anthropic):
    spawned = _spawn(alice)
    fake_anthropic.enqueue(Error(429, "rate_limit_error", "slow down", retry_after=1))
    response = alice.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "hi"})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_error"
    assert not UsageRecord.objects.exists()
    assert not Message.objects.exists()


def test_without_an_anthropic_key_the_offline_model_answers(alice, settings, fake_anthropic):
    settings.ANTHROPIC_API_KEY = ""
    spawned = _spawn(alice)
    reply = alice.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "Hello"}).json()
    assert reply["content"].startswith("[offline model] No ANTHROPIC_API_KEY is configured")
    assert reply["content"].endswith("You said: Hello")
    assert not fake_anthropic.requests
    record = UsageRecord.objects.get()
    assert (record.model, record.cost_usd) == ("offline", Decimal(0))


def test_a_deleted_agent_stops_its_runtime_and_refuses_chat(alice, fake_anthropic):
    spawned = _spawn(alice)
    agent = Agent.objects.get(pk=spawned["agent_id"])
    with runtime_client_sync(agent.endpoint, timeout=1) as runtime:
        assert runtime.get("/health").status_code == 200
        assert alice.delete(f"/v1/agents/delete?agent_id={agent.pk}").status_code == 200
        agent.refresh_from_db()
        assert agent.status == "stopped"
        with pytest.raises(httpx.HTTPError):
            runtime.get("/health")
    response = alice.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "hi"})
    assert response.status_code == 404


def test_the_agents_metrics_are_served_through_the_console(alice, fake_anthropic):
    spawned = _spawn(alice)
    alice.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "hi"}).raise_for_status()
    response = alice.get(spawned["metrics_url"])
    assert response.status_code == 200
    assert 'agent_requests_total{endpoint="/v1/agent/chat",status="200"} 1.0' in response.text


def test_a_runtime_that_cannot_start_ends_failed_with_its_log(alice, settings, fake_anthropic):
    settings.GATEWAY_URL = ""  # the runtime refuses to start without a gateway
    spawned = _spawn(alice)
    agent = Agent.objects.get(pk=spawned["agent_id"])
    assert agent.status == "failed"
    assert "did not become healthy" in agent.last_error
    assert "AGENT_GATEWAY_URL is required" in agent.last_error


def _events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line[5:])))
    return events


def test_a_streamed_chat_sends_deltas_then_the_recorded_result(alice, fake_anthropic):
    spawned = _spawn(alice)
    body = {"prompt": "Stream me a few words", "stream": True}
    with alice.stream("POST", f"{spawned['url']}/v1/agent/chat", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"delta"} and len(names) > 2
    done = events[-1][1]
    assert "".join(data["text"] for _, data in events[:-1]) == done["content"]
    assert done["content"] == "Echo: Stream me a few words"
    assert done["usage"]["output_tokens"] == count_tokens(done["content"])
    record = UsageRecord.objects.get()
    assert Decimal(done["cost_usd"]) == record.cost_usd > 0
    assert Message.objects.filter(session_id=done["session_id"]).count() == 2


def test_a_streamed_chat_with_a_stopped_agent_is_refused_before_streaming(alice, fake_anthropic):
    spawned = _spawn(alice)
    Agent.objects.filter(pk=spawned["agent_id"]).update(status="stopped")
    response = alice.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "hi", "stream": True})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "agent_not_running"


def test_a_reply_holding_nul_characters_is_stored_and_returned(alice, fake_anthropic):
    spawned = _spawn(alice)
    fake_anthropic.enqueue(Text("before\x00after"))
    reply = alice.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "hi"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"] == "before\x00after"  # the client gets what Claude said
    stored = Message.objects.get(session_id=reply.json()["session_id"], role="assistant")
    assert stored.content == "before\ufffdafter"


# --- A chat turn is a live turn, as the chat page's and /api/v1's are ----------------------------


def _log_types(session_id: str) -> list[str]:
    """The types of the session's events, as a page that follows the session received them."""
    return [e["type"] for e in async_to_sync(live_replay)(session_id, after=0).events]


def test_a_chat_is_broadcast_to_the_sessions_followers(alice, fake_anthropic):
    spawned = _spawn(alice)
    reply = alice.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "A few words"})
    assert reply.status_code == 200, reply.text
    types = _log_types(reply.json()["session_id"])
    assert types[0] == "turn_started" and types[-1] == "done"
    assert set(types[1:-1]) == {"delta"}


def test_a_chat_is_stopped_by_a_cancel_from_another_request(alice, fake_anthropic):
    spawned = _spawn(alice)
    fake_anthropic.enqueue(Hang(30))
    answers: list[httpx.Response] = []
    chat = threading.Thread(
        target=lambda: answers.append(
            alice.post(f"{spawned['url']}/v1/agent/chat", json={"prompt": "Take your time"})
        )
    )
    chat.start()
    try:
        assert eventually(lambda: fake_anthropic.requests)
        session_id = str(Session.objects.get().pk)
        assert async_to_sync(live_claimed)(session_id), "the chat's turn holds no claim"
        cancel = alice.post(f"/api/v1/sessions/{session_id}/cancel")
        assert cancel.status_code == 202, cancel.text
    finally:
        chat.join(timeout=10)
    assert not chat.is_alive(), "the cancelled chat did not answer"
    assert answers[0].status_code == 409, answers[0].text
    assert answers[0].json()["error"]["code"] == "turn_cancelled"
    assert eventually(lambda: fake_anthropic.disconnects == 1)
    assert not Message.objects.exists()


def test_two_chats_at_once_in_one_session_are_both_answered_in_order(alice, fake_anthropic):
    spawned = _spawn(alice)
    chat_url = f"{spawned['url']}/v1/agent/chat"
    session_id = alice.post(chat_url, json={"prompt": "one"}).json()["session_id"]
    release = threading.Event()
    fake_anthropic.enqueue(Hang(30, release=release))
    answers: dict[str, list[tuple[str, dict]] | httpx.Response] = {}

    def ask_json() -> None:
        answers["two"] = alice.post(chat_url, json={"prompt": "two", "session_id": session_id})

    def ask_stream(client: httpx.Client) -> None:
        body = {"prompt": "three", "session_id": session_id, "stream": True}
        with client.stream("POST", chat_url, json=body) as response:
            assert response.status_code == 200
            answers["three"] = _events(response)

    first = threading.Thread(target=ask_json)
    first.start()
    with httpx.Client(timeout=30, headers=alice.headers) as other:
        try:
            assert eventually(lambda: len(fake_anthropic.requests) == 2)
            second = threading.Thread(target=ask_stream, args=(other,))
            second.start()
            time.sleep(0.5)
            assert not answers, "a chat answered while the first was still being written"
        finally:
            release.set()
            first.join(timeout=10)
            second.join(timeout=10)
    assert answers["two"].status_code == 200, answers["two"].text
    assert answers["two"].json()["content"] == "Echo: two"
    assert answers["three"][-1] == ("done", answers["three"][-1][1])
    assert answers["three"][-1][1]["content"] == "Echo: three"
    contents = Message.objects.filter(session_id=session_id).order_by("created_at", "pk")
    assert list(contents.values_list("content", flat=True)) == [
        "one",
        "Echo: one",
        "two",
        "Echo: two",
        "three",
        "Echo: three",
    ]
