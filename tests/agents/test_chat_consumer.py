"""The chat WebSocket (``agents.consumers.ChatConsumer``) through the whole ASGI stack.

Sockets are ``WebsocketCommunicator``s on ``config.asgi.application`` (Origin check, session
auth, routing); turns go to a real agent runtime booted by the Celery task (run eagerly), which
calls the console's gateway (served over ASGI) and the fake Anthropic behind it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from prometheus_client import REGISTRY

from agents import services
from agents.consumers import CLOSE_ANONYMOUS, ChatConsumer
from agents.models import Agent, Message, Session
from agents.services.conversations import conversation_store
from config.asgi import application
from console.models import Budget, UsageRecord
from tests.fakes.anthropic import Text, count_tokens
from tests.polling import eventually

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
TERMINAL = {"done", "cancelled", "error"}


_cookies: dict[int, bytes] = {}


@pytest.fixture(autouse=True)
def _logged_in(user, outsider) -> None:
    """Session cookies of alice and mallory, made before any scenario's event loop runs."""
    _cookies.clear()
    for someone in (user, outsider):
        client = Client()
        client.force_login(someone)
        _cookies[someone.pk] = f"sessionid={client.cookies['sessionid'].value}".encode()


def _socket(user=None, origin: tuple[bytes, bytes] | None = ORIGIN) -> WebsocketCommunicator:
    # As a browser sends them: the page's Host, and its Origin (which must match it).
    headers = [(b"host", b"127.0.0.1:8000"), *([origin] if origin else [])]
    if user is not None:
        headers.append((b"cookie", _cookies[user.pk]))
    return WebsocketCommunicator(application, "/ws/chat/", headers=headers)


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(scenario)()


async def _connected(socket: WebsocketCommunicator) -> dict[str, Any]:
    connected, code = await socket.connect(timeout=5)
    assert connected, code
    ready = await socket.receive_json_from(timeout=5)
    assert ready["type"] == "ready"
    return ready


async def _opened(socket: WebsocketCommunicator, session_id: str) -> dict[str, Any]:
    """Open the session on the socket: its ``session`` snapshot."""
    await socket.send_json_to({"type": "open", "session_id": session_id})
    snapshot = await socket.receive_json_from(timeout=5)
    assert snapshot["type"] == "session", snapshot
    return snapshot


async def _until(socket: WebsocketCommunicator, types: set[str], timeout: float = 30) -> list[dict]:
    """Every event up to and including the first of ``types``."""
    found = []
    deadline = time.monotonic() + timeout
    while True:
        event = await socket.receive_json_from(timeout=max(0.1, deadline - time.monotonic()))
        found.append(event)
        if event["type"] in types:
            return found


async def _error(socket: WebsocketCommunicator, frame: Any) -> dict[str, Any]:
    await (socket.send_json_to(frame) if not isinstance(frame, str) else socket.send_to(frame))
    event = await socket.receive_json_from(timeout=5)
    assert event["type"] == "error", event
    assert set(event["error"]) == {"code", "message", "details"}
    return event["error"]


def _seqs(events: list[dict]) -> list[int]:
    return [e["seq"] for e in events if "seq" in e and e["type"] != "session"]


def _in_order(events: list[dict]) -> bool:
    """The stream's events are numbered 1, 2, 3… with none missing or repeated."""
    seqs = _seqs(events)
    return seqs == list(range(1, len(seqs) + 1))


# --- Fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def agent(user, live_console) -> Agent:
    agent = services.agent_spawn(owner=user, name="chatty", memory_mib=256)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    return agent


@pytest.fixture
def session(user, agent) -> Session:
    return services.session_create(user=user, agent_id=agent.pk, title="")


@pytest.fixture
def quiet_session(user, make_user) -> Session:
    """A session with an agent row and no runtime, for what needs no turn."""
    agent = Agent.objects.create(owner=user, name="idle", model="claude-sonnet-4-5")
    return Session.objects.create(agent=agent, user=user, title="quiet")


@pytest.fixture
def slow_anthropic(fake_anthropic, monkeypatch):
    monkeypatch.setattr(fake_anthropic, "chunk_delay", 0.15)
    return fake_anthropic


# --- The handshake -------------------------------------------------------------------------------


def test_an_anonymous_socket_is_refused_during_the_handshake():
    async def scenario():
        socket = _socket(None)
        connected, code = await socket.connect(timeout=5)
        assert (connected, code) == (False, CLOSE_ANONYMOUS)

    run(scenario)


def test_a_foreign_origin_is_refused_and_a_missing_one_too(user):
    async def scenario():
        for origin in [(b"origin", b"https://evil.example"), None]:
            socket = _socket(user, origin=origin)
            connected, _ = await socket.connect(timeout=5)
            assert not connected
        socket = _socket(user)
        assert (await _connected(socket))["user"] == "alice"
        await socket.disconnect()

    run(scenario)


def test_a_suspended_user_is_refused(user, settings):
    from console.services import quota_get

    # Refused before the layer matters: on its own loop, a Redis layer's per-loop connections
    # have hung this test (and, with it, the layer for the tests after it).
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "plumbing.layers.SweptInMemoryChannelLayer"}}

    quota = quota_get(user=user)
    quota.is_suspended = True
    quota.save()

    async def scenario():
        connected, _ = await _socket(user).connect(timeout=5)
        assert not connected

    run(scenario)


# --- Frames --------------------------------------------------------------------------------------


def test_malformed_frames_get_an_error_event_and_the_socket_stays_up(user, quiet_session):
    def malformed() -> float:
        found = REGISTRY.get_sample_value("agent_errors_total", {"error_type": "malformed_frame"})
        return found or 0

    counted = malformed()

    async def scenario():
        socket = _socket(user)
        await _connected(socket)
        assert (await _error(socket, "{not json"))["code"] == "malformed_frame"
        assert malformed() == counted + 1  # in agent_errors_total, as every error answer
        assert (await _error(socket, [1, 2]))["code"] == "malformed_frame"
        assert (await _error(socket, {"no": "type"}))["code"] == "malformed_frame"
        assert (await _error(socket, {"type": 7}))["code"] == "malformed_frame"
        assert (await _error(socket, {"type": "explode"}))["code"] == "unknown_type"
        assert (await _error(socket, {"type": "_open"}))["code"] == "unknown_type"
        bad = await _error(socket, {"type": "open", "session_id": "nope"})
        assert (bad["code"], list(bad["details"])) == ("invalid_request", ["session_id"])
        bad = await _error(socket, {"type": "resume", "session_id": str(quiet_session.pk)})
        assert list(bad["details"]) == ["after"]
        bad = await _error(
            socket, {"type": "send", "session_id": str(quiet_session.pk), "content": "   "}
        )
        assert list(bad["details"]) == ["content"]
        await socket.send_to(bytes_data=b"\x00\x01")
        assert (await socket.receive_json_from(timeout=5))["error"]["code"] == "malformed_frame"
        # Still up, and still serving.
        snapshot = await _opened(socket, str(quiet_session.pk))
        assert (snapshot["type"], snapshot["title"], snapshot["messages"]) == (
            "session",
            "quiet",
            [],
        )
        await socket.disconnect()

    run(scenario)


def test_a_frame_over_the_size_limit_is_refused(user, quiet_session, settings):
    settings.CHAT_WS_MAX_FRAME_BYTES = 2048

    async def scenario():
        socket = _socket(user)
        assert (await _connected(socket))["max_frame_bytes"] == 2048
        frame = {"type": "send", "session_id": str(quiet_session.pk), "content": "é" * 1100}
        error = await _error(socket, frame)
        assert error["code"] == "request_too_large"
        assert error["details"]["limit"] == 2048 and error["details"]["size"] > 2048
        await _opened(socket, str(quiet_session.pk))
        await socket.disconnect()

    run(scenario)


def test_frames_past_the_rate_limit_are_refused_until_it_refills(
    user, quiet_session, settings, monkeypatch
):
    settings.CHAT_WS_MESSAGES_PER_MINUTE = 5
    now = [1000.0]  # the rate window's clock, advanced by hand: a refill here takes 12 s
    monkeypatch.setattr(ChatConsumer, "rate_clock", staticmethod(lambda: now[0]))

    async def scenario():
        socket = _socket(user)
        await _connected(socket)
        sid = str(quiet_session.pk)
        for _ in range(5):
            await _opened(socket, sid)
        error = await _error(socket, {"type": "open", "session_id": sid})
        assert error["code"] == "rate_limited"
        assert error["details"]["value"] == 5 and error["details"]["retry_after_seconds"] > 0
        now[0] += error["details"]["retry_after_seconds"] + 0.1
        await _opened(socket, sid)
        await socket.disconnect()

    run(scenario)


def test_another_users_session_does_not_exist_for_you(user, outsider, quiet_session):
    theirs = str(quiet_session.pk)

    async def scenario():
        socket = _socket(outsider)
        await _connected(socket)
        frames = [
            {"type": "open", "session_id": theirs},
            {"type": "resume", "session_id": theirs, "after": 0},
            {"type": "send", "session_id": theirs, "content": "hi"},
            {"type": "regenerate", "session_id": theirs},
            {"type": "edit", "session_id": theirs, "message_id": 1, "content": "hi"},
            {"type": "stop", "session_id": theirs},
        ]
        for frame in frames:
            assert (await _error(socket, frame))["code"] == "not_found", frame
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    run(scenario)
    assert not Message.objects.exists()


# --- Turns ---------------------------------------------------------------------------------------


def test_a_turn_streams_deltas_then_done_with_tokens_cost_and_budget(user, session, fake_anthropic):
    Budget.objects.create(user=user, metric="usd", window="month", limit=Decimal("5"))
    sid = str(session.pk)

    async def scenario():
        socket = _socket(user)
        await _connected(socket)
        snapshot = await _opened(socket, sid)
        assert (snapshot["seq"], snapshot["running"], snapshot["agent_name"]) == (0, None, "chatty")
        assert snapshot["budgets"][0]["remaining"] == "5"
        await socket.send_json_to({"type": "send", "session_id": sid, "content": "Hello **you**"})
        events = await _until(socket, TERMINAL)
        await socket.disconnect()
        return events

    events = run(scenario)
    started, *deltas, done = events
    assert (started["type"], started["prompt"], started["kept_messages"]) == (
        "turn_started",
        "Hello **you**",
        0,
    )
    assert done["type"] == "done", done
    assert {e["type"] for e in deltas} == {"delta"} and len(deltas) > 1
    assert _in_order(events), _seqs(events)
    assert {e["turn_id"] for e in events} == {started["turn_id"]}
    assert "".join(d["text"] for d in deltas) == "Echo: Hello **you**"
    asked, answer = done["messages"]
    record = UsageRecord.objects.get()
    assert (asked["role"], asked["content"]) == ("user", "Hello **you**")
    assert (answer["role"], answer["content"]) == ("assistant", "Echo: Hello **you**")
    assert (answer["input_tokens"], answer["output_tokens"]) == (
        record.input_tokens,
        record.output_tokens,
    )
    assert Decimal(answer["cost_usd"]) == record.cost_usd > 0
    assert Decimal(done["budgets"][0]["remaining"]) == Decimal(5) - record.cost_usd.quantize(
        Decimal("0.0001")
    )
    assert [m.pk for m in Message.objects.all()] == [asked["id"], answer["id"]]
    session.refresh_from_db()
    assert session.title == "Hello **you**"  # a session's first prompt names it


def test_stop_cancels_the_reply_upstream_and_charges_only_what_was_used(
    user, session, slow_anthropic
):
    words = " ".join(f"word{n}" for n in range(60))
    slow_anthropic.enqueue(Text(words))
    sid = str(session.pk)

    async def scenario():
        socket, other = _socket(user), _socket(user)
        await _connected(socket)
        await _connected(other)
        await socket.send_json_to({"type": "send", "session_id": sid, "content": "A long story"})
        await _until(socket, {"delta"})
        await other.send_json_to({"type": "stop", "session_id": sid})  # from another tab
        stopped_at = time.monotonic()
        events = await _until(socket, TERMINAL, timeout=5)
        ended_in = time.monotonic() - stopped_at
        # Nothing left to stop.
        assert (await _error(other, {"type": "stop", "session_id": sid}))["code"] == "conflict"
        await socket.disconnect()
        await other.disconnect()
        return events, ended_in

    events, ended_in = run(scenario)
    assert events[-1]["type"] == "cancelled", events[-1]
    assert ended_in < 2
    assert sum(e["type"] == "delta" for e in events) < 30
    eventually(
        lambda: slow_anthropic.disconnects == 1 and UsageRecord.objects.exists(),
        5,
        failing="Anthropic's call was not ended and charged",
    )
    record = UsageRecord.objects.get()
    assert 0 < record.output_tokens < count_tokens(words) and record.cost_usd > 0
    assert not Message.objects.exists()


def test_a_second_socket_resumes_from_a_seq_and_gets_every_event_once(
    user, session, slow_anthropic
):
    slow_anthropic.enqueue(Text(" ".join(f"w{n}" for n in range(20))))
    sid = str(session.pk)

    async def scenario():
        first = _socket(user)
        await _connected(first)
        await first.send_json_to({"type": "send", "session_id": sid, "content": "Go"})
        seen = await _until(first, {"delta"})
        seen += [await first.receive_json_from(timeout=5) for _ in range(2)]
        await first.disconnect()  # the page went away; the reply goes on
        await asyncio.sleep(0.5)
        second = _socket(user)
        await _connected(second)
        await second.send_json_to({"type": "resume", "session_id": sid, "after": seen[-1]["seq"]})
        rest = await _until(second, TERMINAL)
        await second.disconnect()
        return seen, rest

    seen, rest = run(scenario)
    events = seen + rest
    assert _in_order(events), _seqs(events)
    assert events[-1]["type"] == "done"
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text == " ".join(f"w{n}" for n in range(20))
    assert [m.content for m in Message.objects.all()] == ["Go", text]


def test_opening_a_session_mid_reply_replays_the_turn_so_far_then_follows(
    user, session, slow_anthropic
):
    slow_anthropic.enqueue(Text(" ".join(f"w{n}" for n in range(12))))
    sid = str(session.pk)

    async def scenario():
        first = _socket(user)
        await _connected(first)
        await first.send_json_to({"type": "send", "session_id": sid, "content": "Go"})
        await _until(first, {"delta"})
        second = _socket(user)
        await _connected(second)
        snapshot = await _opened(second, sid)
        events = await _until(second, TERMINAL)
        await _until(first, TERMINAL)
        await first.disconnect()
        await second.disconnect()
        return snapshot, events

    snapshot, events = run(scenario)
    assert snapshot["type"] == "session" and snapshot["running"] == events[0]["turn_id"]
    assert (events[0]["type"], events[0]["seq"]) == ("turn_started", snapshot["seq"] + 1)
    assert _in_order(events), _seqs(events)
    assert events[-1]["type"] == "done"


def test_a_second_turn_while_one_is_written_waits_for_it(user, session, slow_anthropic):
    slow_anthropic.enqueue(Text(" ".join(f"w{n}" for n in range(10))))
    sid = str(session.pk)

    async def scenario():
        socket = _socket(user)
        await _connected(socket)
        await socket.send_json_to({"type": "send", "session_id": sid, "content": "One"})
        await _until(socket, {"delta"})
        await socket.send_json_to({"type": "send", "session_id": sid, "content": "Two"})
        first = await _until(socket, TERMINAL)
        second = await _until(socket, TERMINAL)
        await socket.disconnect()
        return first, second

    first, second = run(scenario)
    assert first[-1]["type"] == "done" and "error" not in {e["type"] for e in first}
    started = second[0]
    assert (started["type"], started["prompt"]) == ("turn_started", "Two")
    # Prepared once the first had ended: it keeps the first turn's two messages.
    assert started["kept_messages"] == second[-1]["kept_messages"] == 2
    assert second[-1]["type"] == "done"
    assert second[-1]["messages"][-1]["content"] == "Echo: Two"
    seqs = _seqs(first + second)  # the first turn's, then the second's, none missed
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    contents = Message.objects.order_by("created_at", "pk").values_list("content", flat=True)
    assert list(contents) == ["One", "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9", "Two", "Echo: Two"]


def test_regenerate_and_edit_replace_turns_here_and_in_the_runtimes_history(
    user, session, fake_anthropic
):
    sid = str(session.pk)

    async def turn(socket, frame) -> list[dict]:
        await socket.send_json_to(frame | {"session_id": sid})
        events = await _until(socket, TERMINAL)
        assert events[-1]["type"] == "done", events[-1]
        return events

    async def scenario():
        socket = _socket(user)
        await _connected(socket)
        await turn(socket, {"type": "send", "content": "first"})
        await turn(socket, {"type": "send", "content": "second"})
        fake_anthropic.enqueue(Text("another take"))
        regenerated = await turn(socket, {"type": "regenerate"})
        first_id = await sync_to_async(lambda: Message.objects.first().pk)()
        edited = await turn(socket, {"type": "edit", "message_id": first_id, "content": "1st"})
        await socket.disconnect()
        return regenerated, edited

    regenerated, edited = run(scenario)
    assert (regenerated[0]["prompt"], regenerated[0]["kept_messages"]) == ("second", 2)
    assert regenerated[-1]["kept_messages"] == 2
    assert [m["content"] for m in regenerated[-1]["messages"]] == ["second", "another take"]
    # Anthropic was asked the first turn and the prompt again (marked for its cache): not the
    # replaced reply.
    sent = fake_anthropic.requests[-2].body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "first"),
        ("assistant", [{"type": "text", "text": "Echo: first"}]),
        ("user", [{"type": "text", "text": "second", "cache_control": {"type": "ephemeral"}}]),
    ]
    assert (edited[0]["prompt"], edited[0]["kept_messages"]) == ("1st", 0)
    assert [m["role"] for m in fake_anthropic.requests[-1].body["messages"]] == ["user"]
    assert [m.content for m in Message.objects.all()] == ["1st", "Echo: 1st"]
    # The stored turns were replaced with them: a runtime started afresh gets the edit alone.
    assert conversation_store().turns(session_id=sid) == [
        [
            {"role": "user", "content": "1st"},
            {"role": "assistant", "content": [{"type": "text", "text": "Echo: 1st"}]},
        ]
    ]


def test_editing_an_assistant_message_or_regenerating_nothing_is_refused(user, session):
    sid = str(session.pk)

    async def scenario():
        socket = _socket(user)
        await _connected(socket)
        error = await _error(socket, {"type": "regenerate", "session_id": sid})
        assert error["code"] == "conflict"
        frame = {"type": "edit", "session_id": sid, "message_id": 999, "content": "x"}
        assert (await _error(socket, frame))["code"] == "not_found"
        await socket.disconnect()

    run(scenario)


def test_refusals_end_the_turn_with_a_clear_error(user, session, agent, fake_anthropic):
    Budget.objects.create(user=user, metric="usd", window="month", limit=Decimal("0"))
    sid = str(session.pk)

    async def scenario():
        socket = _socket(user)
        await _connected(socket)
        await socket.send_json_to({"type": "send", "session_id": sid, "content": "hi"})
        over_budget = await _until(socket, TERMINAL)
        await sync_to_async(services.agent_stop)(agent=agent)
        await socket.send_json_to({"type": "send", "session_id": sid, "content": "hi"})
        agent_down = await _until(socket, TERMINAL)
        await socket.disconnect()
        return over_budget[-1], agent_down[-1]

    over_budget, agent_down = run(scenario)
    assert (over_budget["type"], over_budget["error"]["code"]) == ("error", "budget_exceeded")
    assert over_budget["error"]["message"]
    assert agent_down["error"]["code"] == "agent_not_running", agent_down
    assert not Message.objects.exists()


def test_a_user_suspended_while_their_socket_is_open_is_refused_their_next_turn(
    user, session, fake_anthropic
):
    from console.services import quota_set_suspended

    sid = str(session.pk)

    async def scenario():
        socket = _socket(user)
        await _connected(socket)  # the socket's user object is loaded, and checked, here
        await sync_to_async(quota_set_suspended)(user_ids=[user.pk], suspended=True)
        await socket.send_json_to({"type": "send", "session_id": sid, "content": "hi"})
        events = await _until(socket, TERMINAL)
        await socket.disconnect()
        return events

    events = run(scenario)
    refused = events[-1]
    assert (refused["type"], refused["error"]["code"]) == ("error", "user_suspended"), refused
    assert [e["type"] for e in events] == ["error"]  # refused before any turn began
    assert not fake_anthropic.requests
    assert not Message.objects.exists()


def test_events_are_json_objects_with_a_type(user, quiet_session):
    """Every event the socket sends is a JSON text frame."""

    async def scenario():
        socket = _socket(user)
        await socket.connect(timeout=5)
        raw = await socket.receive_from(timeout=5)
        await socket.disconnect()
        return raw

    assert json.loads(run(scenario))["type"] == "ready"


@pytest.mark.redis
def test_an_idle_socket_outlives_the_channel_layers_blocking_reads(user, quiet_session):
    """Idle, a socket's channel blocks in Redis 5 s at a time: that must not time it out."""
    sid = str(quiet_session.pk)

    async def scenario():
        socket = _socket(user)
        await _connected(socket)
        await _opened(socket, sid)
        await asyncio.sleep(12)
        await _opened(socket, sid)
        await socket.disconnect()

    run(scenario)


def test_a_reply_chunk_does_not_wait_for_the_thread_that_runs_sync_code(user, quiet_session):
    """A chunk reaches the socket while the one thread that runs the console's sync code (the
    database work of every socket) is busy: nothing on a chunk's way waits for it."""
    from agents.services.live import live_publish

    sid = str(quiet_session.pk)

    async def scenario():
        socket = _socket(user)
        await _connected(socket)
        snapshot = await _opened(socket, sid)
        busy = asyncio.ensure_future(sync_to_async(time.sleep)(2))
        await asyncio.sleep(0.1)  # the sync thread is asleep from here on
        started = time.monotonic()
        chunk = {"type": "delta", "session_id": sid, "turn_id": "t1", "text": "hi"}
        await live_publish(sid, chunk)
        event = await socket.receive_json_from(timeout=5)
        waited = time.monotonic() - started
        await busy
        await socket.disconnect()
        return snapshot, event, waited

    snapshot, event, waited = run(scenario)
    assert (event["type"], event["seq"]) == ("delta", snapshot["seq"] + 1)
    assert waited < 1.0


@pytest.mark.redis
def test_a_burst_of_events_for_many_sockets_of_one_process_loses_none(user, quiet_session):
    """Every socket of a web process shares one inbox in Redis, and one pool of connections
    to it: a burst of chunks for many sockets at once overflows neither."""
    from agents.services.live import live_publish

    sessions = [str(quiet_session.pk)] + [
        str(Session.objects.create(agent=quiet_session.agent, user=user, title=f"s{n}").pk)
        for n in range(9)
    ]
    chunks = 15

    async def scenario():
        sockets = []
        for sid in sessions:
            socket = _socket(user)
            await _connected(socket)
            await _opened(socket, sid)
            sockets.append(socket)
        chunk = {"type": "delta", "turn_id": "t", "text": "w"}
        await asyncio.gather(  # hundreds of publishes at once, as many replies make
            *(
                live_publish(sid, chunk | {"session_id": sid})
                for _ in range(chunks)
                for sid in sessions
            )
        )
        got = [[await s.receive_json_from(timeout=10) for _ in range(chunks)] for s in sockets]
        for socket in sockets:
            await socket.disconnect()
        return got

    for events in run(scenario):
        assert [e["seq"] for e in events] == list(range(1, chunks + 1))
