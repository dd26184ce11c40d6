"""The chat consumer dispatches the socket's frames and the channel layer's messages one at a
time, each source's in its order, with one task per source."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.exceptions import StopConsumer

from agents.consumers import _dispatch_in_turn


def test_messages_are_dispatched_one_at_a_time_each_source_in_order():
    async def scenario() -> list[str]:
        frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        layer: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        seen: list[str] = []
        busy = False

        async def dispatch(message: dict[str, Any]) -> None:
            nonlocal busy
            assert not busy, "two messages dispatched at once"
            busy = True
            await asyncio.sleep(0)  # a handler that awaits holds the next message back
            seen.append(message["n"])
            busy = False
            if len(seen) == 40:
                raise StopConsumer

        for n in range(20):
            layer.put_nowait({"n": f"l{n}"})
            frames.put_nowait({"n": f"f{n}"})
        await asyncio.wait_for(_dispatch_in_turn([frames.get, layer.get], dispatch), 5)
        return seen

    with pytest.raises(StopConsumer):
        asyncio.run(scenario())


def test_every_message_is_dispatched_once_in_its_sources_order():
    seen: list[str] = []

    async def scenario() -> None:
        frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        layer: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def dispatch(message: dict[str, Any]) -> None:
            seen.append(message["n"])
            if len(seen) == 40:
                raise StopConsumer

        async def feed() -> None:
            for n in range(20):
                layer.put_nowait({"n": f"l{n}"})
                await asyncio.sleep(0)
                frames.put_nowait({"n": f"f{n}"})

        feeding = asyncio.create_task(feed())
        with pytest.raises(StopConsumer):
            await asyncio.wait_for(_dispatch_in_turn([frames.get, layer.get], dispatch), 5)
        await feeding

    asyncio.run(scenario())

    assert sorted(seen) == sorted([f"l{n}" for n in range(20)] + [f"f{n}" for n in range(20)])
    assert [n for n in seen if n[0] == "l"] == [f"l{n}" for n in range(20)]
    assert [n for n in seen if n[0] == "f"] == [f"f{n}" for n in range(20)]


def test_a_failing_source_fails_the_consumer_and_stops_the_other():
    async def scenario() -> None:
        idle: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def broken() -> dict[str, Any]:
            raise RuntimeError("the channel layer is gone")

        async def dispatch(message: dict[str, Any]) -> None:
            raise AssertionError("nothing to dispatch")

        with pytest.raises(RuntimeError, match="gone"):
            await asyncio.wait_for(_dispatch_in_turn([idle.get, broken], dispatch), 5)
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == 1  # this one: the sources' tasks are gone

    asyncio.run(scenario())
