"""The in-memory channel layer sweeps expired memberships at most once a second."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings

from plumbing.layers import SweptInMemoryChannelLayer


def test_the_console_without_redis_uses_the_swept_layer():
    if not settings.REDIS_URL:
        backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
        assert backend == "plumbing.layers.SweptInMemoryChannelLayer"


def test_group_sends_within_the_sweep_interval_walk_the_groups_once():
    async def scenario() -> tuple[dict, dict, dict]:
        layer = SweptInMemoryChannelLayer(group_expiry=1)
        layer.sweep_seconds = 60
        channel = await layer.new_channel()
        await layer.group_add("chat.a", channel)
        await layer.group_send("chat.a", {"type": "one"})  # the first send sweeps
        first = await layer.receive(channel)
        await asyncio.sleep(2.1)  # the membership has expired, but no sweep is due
        await layer.group_send("chat.a", {"type": "two"})
        second = await asyncio.wait_for(layer.receive(channel), 1)
        layer.sweep_seconds = 0  # a sweep is due: the expired membership goes
        await layer.group_send("chat.a", {"type": "three"})
        return first, second, layer.groups.get("chat.a", {})

    first, second, members = asyncio.run(scenario())

    assert (first["type"], second["type"]) == ("one", "two")
    assert members == {}


def test_a_group_send_reaches_every_member_except_a_full_one():
    async def scenario() -> tuple[list[dict], dict]:
        layer = SweptInMemoryChannelLayer(capacity=1)
        channels = [await layer.new_channel() for _ in range(3)]
        for channel in channels:
            await layer.group_add("chat.b", channel)
        await layer.send(channels[2], {"type": "filler"})  # its queue is now full
        await layer.group_send("chat.b", {"type": "chunk"})
        got = [await asyncio.wait_for(layer.receive(channel), 1) for channel in channels]
        await layer.group_send("chat.b", {"type": "next"})
        return got, await asyncio.wait_for(layer.receive(channels[2]), 1)

    got, later = asyncio.run(scenario())

    assert [m["type"] for m in got] == ["chunk", "chunk", "filler"]
    assert later["type"] == "next"


def test_each_member_gets_its_own_copy_of_a_message_in_order():
    async def scenario() -> tuple[list[dict], list[dict]]:
        layer = SweptInMemoryChannelLayer()
        first, second = await layer.new_channel(), await layer.new_channel()
        for channel in (first, second):
            await layer.group_add("chat.c", channel)
        nested = {"type": "nested", "event": {"seq": 1}}
        for n in range(3):
            await layer.group_send("chat.c", {"type": "chat.event", "seq": n, "text": f"t{n}"})
        await layer.group_send("chat.c", nested)
        got = [await asyncio.wait_for(layer.receive(first), 1) for _ in range(4)]
        got[0]["seq"] = 99  # a member changing its copy changes no one else's
        got[3]["event"]["seq"] = 99
        nested["event"]["seq"] = 7
        others = [await asyncio.wait_for(layer.receive(second), 1) for _ in range(4)]
        return got, others

    got, others = asyncio.run(scenario())

    assert [m["text"] for m in got[:3]] == ["t0", "t1", "t2"]
    assert [m.get("seq") for m in others[:3]] == [0, 1, 2]
    assert others[3]["event"] == {"seq": 1}


def test_a_group_send_to_a_bad_group_name_is_refused():
    layer = SweptInMemoryChannelLayer()

    with pytest.raises(TypeError):
        asyncio.run(layer.group_send("no spaces allowed", {"type": "x"}))
