"""Conversations outlive runtimes: every turn's full content is stored as it completes, and a
runtime started afresh (after a crash, or on another host once its own is lost) gets the
session's history back before its next turn. For real: the console over ASGI, agents booted by
the process backend, Claude the fake Anthropic behind the gateway."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.utils import timezone

from agents import sandbox
from agents.models import Agent, Message, SandboxHost, Session, TurnContent
from agents.services import agents_reconcile, host_register
from agents.services.conversations import (
    BLOCK_CHARS,
    DjangoConversationStore,
    turn_messages,
)
from agents.services.hosts import hosts_mark_stale
from console.models import Quota, UsageRecord
from console.services import cost_of
from console.services.ledger import TokenUsage, price_for
from tests.fakes.anthropic import Hang, Text, ToolUse
from tests.polling import eventually

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1"
SECRET_OUTPUT = "launch-code-4242"


@pytest.fixture
def alice(user, api_key, live_console):
    Quota.objects.update_or_create(user=user, defaults={"requests_per_minute": None})
    headers = {"Authorization": f"Bearer {api_key(user)}"}
    with httpx.Client(base_url=f"{live_console}{API}", headers=headers, timeout=60) as client:
        yield client


def _spawn(alice: httpx.Client, **spec: Any) -> Agent:
    response = alice.post("/agents", json={"name": "durable", "memory": 256, **spec})
    assert response.status_code == 201, response.text
    agent = Agent.objects.get(pk=response.json()["agent_id"])
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    return agent


def _say(alice: httpx.Client, session_id: str, prompt: str) -> dict[str, Any]:
    response = alice.post(f"/sessions/{session_id}/messages", json={"content": prompt})
    assert response.status_code == 200, response.text
    return response.json()


def _tool_turn(alice: httpx.Client, fake_anthropic, agent: Agent) -> str:
    """A session whose first turn ran a command; returns its id."""
    session = alice.post("/sessions", json={"agent_id": str(agent.pk)}).json()["session_id"]
    fake_anthropic.enqueue(
        ToolUse("run_command", {"command": f"echo {SECRET_OUTPUT}"}, id="toolu_first"),
        Text("It printed the code."),
    )
    assert _say(alice, session, "Run the command.")["content"] == "It printed the code."
    return session


def _kill_runtime(agent: Agent) -> None:
    pid = sandbox.driver().status(agent.sandbox_id).pid
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # booted from this process: reaped here
        os.waitpid(pid, 0)


def _assert_continued(fake_anthropic, alice: httpx.Client, session: str) -> None:
    """The next turn is sent to Claude with the first, its tool call and result included."""
    fake_anthropic.reset()
    assert _say(alice, session, "What did it print?")["content"] == "Echo: What did it print?"
    [request] = [r.body for r in fake_anthropic.requests if r.path == "/v1/messages"]
    prompt, called, answered, reply, asked = request["messages"]
    assert prompt == {"role": "user", "content": "Run the command."}
    assert called["content"][0] == {
        "type": "tool_use",
        "id": "toolu_first",
        "name": "run_command",
        "input": {"command": f"echo {SECRET_OUTPUT}"},
    }
    [result] = answered["content"]
    assert result["tool_use_id"] == "toolu_first" and SECRET_OUTPUT in result["content"]
    assert reply["content"][0]["text"] == "It printed the code."
    assert asked["content"][0]["text"] == "What did it print?"
    assert len(TurnContent.objects.filter(session_id=session)) == 2


@pytest.mark.timeout(120)
def test_a_runtime_killed_mid_conversation_continues_it_with_every_tool_result(
    alice, fake_anthropic
):
    agent = _spawn(alice)
    session = _tool_turn(alice, fake_anthropic, agent)
    before = sandbox.driver().status(agent.sandbox_id).pid

    _kill_runtime(agent)
    assert agents_reconcile()["failed"] == 1
    assert alice.post(f"/agents/{agent.pk}/start").status_code == 200
    agent.refresh_from_db()
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    assert sandbox.driver().status(agent.sandbox_id).pid != before

    _assert_continued(fake_anthropic, alice, session)


@pytest.mark.timeout(120)
def test_an_agent_whose_host_is_lost_continues_its_sessions_on_another(alice, fake_anthropic):
    agent = _spawn(alice)
    session = _tool_turn(alice, fake_anthropic, agent)
    spare = host_register(
        name="spare",
        backend=settings.SANDBOX_BACKEND,
        capacity_vcpus=8,
        capacity_memory_mib=8 * 1024,
    )

    # The machine goes away with its runtime; its worker's heartbeats stop.
    _kill_runtime(agent)
    silent = timezone.now() - timedelta(seconds=settings.SANDBOX_HOST_STALE_SECONDS * 2)
    SandboxHost.objects.filter(pk=agent.host_id).update(last_seen_at=silent)
    assert hosts_mark_stale() == [settings.SANDBOX_HOST_NAME]
    assert alice.post(f"/agents/{agent.pk}/start").status_code == 200
    agent.refresh_from_db()
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    assert agent.host_id == spare.pk

    _assert_continued(fake_anthropic, alice, session)


@pytest.mark.timeout(120)
def test_the_stored_turns_are_their_users_alone(
    alice, fake_anthropic, live_console, outsider, operator, api_key
):
    agent = _spawn(alice)
    session = _tool_turn(alice, fake_anthropic, agent)

    response = alice.get(f"/sessions/{session}/turns")

    assert response.status_code == 200, response.text
    [turn] = response.json()["turns"]
    assert [m["role"] for m in turn] == ["user", "assistant", "user", "assistant"]
    assert turn[1]["content"][0]["name"] == "run_command"
    assert SECRET_OUTPUT in turn[2]["content"][0]["content"]
    for other in (outsider, operator):  # another tenant; an operator, who reads sessions
        headers = {"Authorization": f"Bearer {api_key(other)}"}
        with httpx.Client(base_url=f"{live_console}{API}", headers=headers) as client:
            assert client.get(f"/sessions/{session}/turns").status_code == 404


@pytest.mark.timeout(120)
def test_a_turn_stopped_mid_tool_round_leaves_nothing_half_stored(
    alice, live_console, user, api_key, fake_anthropic
):
    agent = _spawn(alice)
    session = _tool_turn(alice, fake_anthropic, agent)
    fake_anthropic.enqueue(ToolUse("run_command", {"command": "echo stopped"}), Hang(30))
    answers: list[httpx.Response] = []
    turn = threading.Thread(
        target=lambda: answers.append(
            alice.post(f"/sessions/{session}/messages", json={"content": "Once more"})
        )
    )
    turn.start()
    try:
        # Stopped while Claude answers the tool round.
        eventually(lambda: len(fake_anthropic.requests) == 4, failing="timed out")
        headers = {"Authorization": f"Bearer {api_key(user)}"}
        with httpx.Client(base_url=f"{live_console}{API}", headers=headers) as other:
            assert other.post(f"/sessions/{session}/cancel").status_code == 202
    finally:
        turn.join(timeout=10)
    assert answers[0].status_code == 409
    assert TurnContent.objects.filter(session_id=session).count() == 1

    _kill_runtime(agent)
    assert agents_reconcile()["failed"] == 1
    assert alice.post(f"/agents/{agent.pk}/start").status_code == 200

    # The first turn comes back whole; of the stopped one, nothing (no unanswered tool call).
    _assert_continued(fake_anthropic, alice, session)


@pytest.mark.timeout(120)
def test_tool_rounds_read_the_cache_and_the_ledger_prices_the_reads(alice, fake_anthropic):
    agent = _spawn(alice, system_prompt="You keep notes. " * 40)
    fake_anthropic.cache_min_tokens = 50
    try:
        _tool_turn(alice, fake_anthropic, agent)
    finally:
        fake_anthropic.cache_min_tokens = 1024

    first, second = UsageRecord.objects.filter(agent_id=agent.pk).order_by("created_at", "pk")
    assert first.cache_read_input_tokens == 0 and first.cache_creation_input_tokens > 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    price = price_for(model=second.model, at=second.created_at)
    assert price is not None and price.cache_read_per_mtok < price.input_per_mtok
    counts = {
        kind: getattr(second, kind)
        for kind in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "cache_creation_1h_input_tokens",
        )
    }
    assert second.cost_usd == cost_of(usage=TokenUsage(**counts), price=price)
    # The prefix read from the cache is priced at the read rate, not as input.
    as_input = TokenUsage(
        **counts
        | {
            "input_tokens": second.input_tokens + second.cache_read_input_tokens,
            "cache_read_input_tokens": 0,
        }
    )
    assert second.cost_usd < cost_of(usage=as_input, price=price)


def test_a_turn_is_stored_bounded_and_valid(user):
    big = "x" * (BLOCK_CHARS * 3)
    reported = [
        {"role": "user", "content": "a prompt the runtime changed"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look.\x00"},
                {"type": "tool_use", "id": "t1", "name": "read_file", "input": {"path": big}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": big}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
    ]

    prompt, called, answered, reply = turn_messages(
        reported=reported, prompt="the prompt", content="Done."
    )

    assert prompt == {"role": "user", "content": "the prompt"}  # the console's, not the report's
    assert called["content"][0]["text"] == "Let me look.\ufffd"
    assert set(called["content"][1]["input"]) == {"input_not_kept"}
    result = answered["content"][0]["content"]
    assert len(result) < BLOCK_CHARS + 100 and result.endswith("more characters not kept]")
    assert reply["content"] == [{"type": "text", "text": "Done."}]


@pytest.mark.parametrize(
    "reported",
    [
        None,
        "text",
        [{"role": "user", "content": "p"}],
        # A tool call left unanswered (a turn stopped mid-round) is not a valid history.
        [
            {"role": "user", "content": "p"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "input": {}}]},
        ],
        [
            {"role": "user", "content": "p"},
            {"role": "assistant", "content": [{"type": "image", "source": {}}]},
        ],
        [{"role": "user", "content": "p"}, {"role": "system", "content": [{"type": "text"}]}],
        # Bounded blocks, but too many of them.
        [
            {"role": "user", "content": "p"},
            *[
                {"role": role, "content": [{"type": "text", "text": "y" * BLOCK_CHARS}] * 60}
                for role in ("assistant", "user") * 2
            ][:-1],
        ],
    ],
)
def test_a_report_that_is_not_a_valid_turn_is_stored_as_its_text(reported):
    assert turn_messages(reported=reported, prompt="p", content="the reply") == [
        {"role": "user", "content": "p"},
        {"role": "assistant", "content": [{"type": "text", "text": "the reply"}]},
    ]


def test_turns_recorded_before_the_store_come_back_as_their_text(user):
    agent = Agent.objects.create(owner=user, model="m", sandbox_id="s")
    session = Session.objects.create(agent=agent, user=user)
    for role, content in (("user", "old"), ("assistant", "older reply"), ("user", "new")):
        Message.objects.create(session=session, role=role, content=content)
    Message.objects.create(session=session, role="assistant", content="new reply")
    store = DjangoConversationStore()
    store.record(
        session_id=str(session.pk),
        position=1,
        messages=turn_messages(reported=None, prompt="new", content="stored reply"),
    )

    old, new = store.turns(session_id=str(session.pk))

    assert old[0] == {"role": "user", "content": "old"}
    assert old[1]["content"][0]["text"] == "older reply"
    assert new[1]["content"][0]["text"] == "stored reply"
    # Recording at a position replaces it and every later turn.
    store.record(session_id=str(session.pk), position=0, messages=old)
    assert TurnContent.objects.filter(session=session).count() == 1
