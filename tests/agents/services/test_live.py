"""The live-turn replay log (``agents.services.live``): numbering, the cap, the claim, in this
process's memory and in Redis alike."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from asgiref.sync import async_to_sync

from agents.services import live
from agents.services.chat import ChatTurn

BACKENDS = [
    pytest.param("", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=BACKENDS)
def backend(request, settings) -> str:
    settings.REDIS_URL = os.environ.get("REDIS_URL", "") if request.param else ""
    settings.CHAT_REPLAY_EVENTS = 10
    return request.param


def _publish(session_id: str, count: int) -> list[int]:
    async def go() -> list[int]:
        return [
            (await live.live_publish(session_id, {"type": "delta", "session_id": session_id}))[
                "seq"
            ]
            for _ in range(count)
        ]

    return async_to_sync(go)()


def test_events_are_numbered_per_session_and_replayed_after_a_seq(backend):
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    assert _publish(one, 3) == [1, 2, 3]
    assert _publish(two, 2) == [1, 2]
    assert _publish(one, 1) == [4]

    replay = async_to_sync(live.live_replay)(one, after=2)
    assert ([e["seq"] for e in replay.events], replay.complete, replay.last) == ([3, 4], True, 4)
    caught_up = async_to_sync(live.live_replay)(one, after=4)
    assert (caught_up.events, caught_up.complete) == ([], True)


def test_a_replay_past_the_cap_or_ahead_of_the_log_is_incomplete(backend):
    session = str(uuid.uuid4())
    _publish(session, 25)  # the log keeps the last 10: 16 to 25

    assert not async_to_sync(live.live_replay)(session, after=5).complete
    kept = async_to_sync(live.live_replay)(session, after=15)
    assert kept.complete and [e["seq"] for e in kept.events] == list(range(16, 26))
    # A page that saw more than the log knows (the log expired and started again).
    assert not async_to_sync(live.live_replay)(session, after=40).complete
    assert not async_to_sync(live.live_replay)(str(uuid.uuid4()), after=3).complete


def test_a_session_is_claimed_by_one_turn_and_its_last_event_releases_it(backend):
    session = str(uuid.uuid4())

    async def go() -> None:
        log = live._log()
        assert await log.claim(session, "turn-a", 30)
        assert not await log.claim(session, "turn-b", 30)
        assert await live.live_claimed(session) == "turn-a"
        await live.live_publish(session, {"type": "delta", "session_id": session}, ending="turn-b")
        assert await live.live_claimed(session) == "turn-a"  # only its own turn ends it
        await live.live_publish(session, {"type": "done", "session_id": session}, ending="turn-a")
        assert await live.live_claimed(session) is None
        assert await log.claim(session, "turn-b", 30)
        await log.release(session, "turn-b")

    async_to_sync(go)()


def _events(session_id: str) -> list[dict]:
    return async_to_sync(live.live_replay)(session_id, after=0).events


def _started(session_id: str, turn_id: str) -> None:
    event = {"type": "turn_started", "session_id": session_id, "turn_id": turn_id}
    async_to_sync(live.live_publish)(session_id, event)


def test_a_turn_whose_writer_stopped_is_ended_for_its_followers(backend):
    session, turn = str(uuid.uuid4()), uuid.uuid4().hex
    _started(session, turn)  # begun, and no process holds the session any more

    async_to_sync(live.live_end_abandoned)(session)
    last = _events(session)[-1]
    assert (last["type"], last["turn_id"], last["error"]["code"]) == ("error", turn, "turn_lost")
    assert last["status"] == 502
    async_to_sync(live.live_end_abandoned)(session)  # once: it has ended now
    assert len(_events(session)) == 2


def test_a_turn_still_being_written_or_ended_is_left_alone(backend):
    session, turn = str(uuid.uuid4()), uuid.uuid4().hex
    assert async_to_sync(live._log().claim)(session, turn, 30)
    _started(session, turn)
    async_to_sync(live.live_end_abandoned)(session)
    assert [e["type"] for e in _events(session)] == ["turn_started"]

    done = {"type": "done", "session_id": session, "turn_id": turn, "messages": []}
    async_to_sync(live.live_publish)(session, done, ending=turn)
    async_to_sync(live.live_end_abandoned)(session)
    assert [e["type"] for e in _events(session)] == ["turn_started", "done"]


@pytest.mark.django_db(transaction=True)
def test_a_stop_asked_as_a_turn_starts_stops_it_before_it_listens(backend, user):
    """A stop that arrives between the turn's claim and its first step (its task has not run
    yet, so it listens for nothing) still stops it; a stop asked of no turn is refused."""
    session = str(uuid.uuid4())
    turn = ChatTurn(user=user, agent_id=uuid.uuid4(), prompt="hi", session_id=session)

    async def go() -> tuple[bool, bool, list[dict]]:
        nothing_to_stop = await live.live_stop(session)
        started = await live.live_turn_start(live=live.LiveTurn(turn, kept_messages=0))
        stopped = await live.live_stop(session)  # no await between: the turn has not run
        followed = live.live_follow(session, turn_id=started["turn_id"], after=started["seq"])
        return nothing_to_stop, stopped, [event async for event in followed]

    nothing_to_stop, stopped, events = async_to_sync(go)()
    assert (nothing_to_stop, stopped) == (False, True)
    assert [event["type"] for event in events] == ["cancelled"]
    assert async_to_sync(live.live_claimed)(session) is None


@pytest.mark.django_db(transaction=True)
def test_a_turn_sent_while_another_holds_the_session_waits_for_its_end_then_starts(backend, user):
    session = str(uuid.uuid4())
    turn = ChatTurn(user=user, agent_id=uuid.uuid4(), prompt="hi", session_id=session)

    async def go() -> tuple[list[dict], str | None]:
        assert await live._log().claim(session, "turn-a", 30)
        started = await live.live_turn_start(live=live.LiveTurn(turn, kept_messages=0))
        followed = live.live_follow(session, turn_id=started["turn_id"], after=started["seq"])
        first = asyncio.ensure_future(anext(followed))
        await asyncio.sleep(0.3)
        assert not first.done(), "the turn did not wait for the one holding the session"
        holder = await live.live_claimed(session)
        end = {"type": "done", "session_id": session, "turn_id": "turn-a", "messages": []}
        await live.live_publish(session, end, ending="turn-a")
        return [await first, *[event async for event in followed]], holder

    events, holder = async_to_sync(go)()
    assert holder == "turn-a"
    # It started once the first had ended; its agent does not exist, which ends it.
    assert [event["type"] for event in events] == ["turn_started", "error"]
    assert events[-1]["error"]["code"] == "agent_not_found"
    assert async_to_sync(live.live_claimed)(session) is None


@pytest.mark.django_db(transaction=True)
def test_a_turn_that_waits_past_the_bound_ends_with_a_clear_error(backend, user, settings):
    settings.CHAT_TURN_QUEUE_SECONDS = 0.2
    session = str(uuid.uuid4())
    turn = ChatTurn(user=user, agent_id=uuid.uuid4(), prompt="hi", session_id=session)

    async def go() -> list[dict]:
        assert await live._log().claim(session, "turn-a", 30)
        started = await live.live_turn_start(live=live.LiveTurn(turn, kept_messages=0))
        followed = live.live_follow(session, turn_id=started["turn_id"], after=started["seq"])
        return [event async for event in followed]

    events = async_to_sync(go)()
    assert [(e["type"], e["status"], e["error"]["code"]) for e in events] == [
        ("error", 409, "turn_queue_timeout")
    ]
    assert events[0]["error"]["details"] == {"session_id": session, "waited_seconds": 0.2}
    assert async_to_sync(live.live_claimed)(session) == "turn-a"  # still the first's
    async_to_sync(live._log().release)(session, "turn-a")
