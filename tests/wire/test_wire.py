"""The wire on its own: bounded JSON, SSE frames read back as written, request ids, and no
framework in a process that imports it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wire import jsonbound
from wire.logs import current_request_id, request_id_or_new, using_request_id, valid_request_id
from wire.sse import sse_events, sse_frame

REPO = Path(__file__).resolve().parents[2]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_at_the_depth_bound_parses_and_past_it_is_refused():
    assert jsonbound.depth_of(jsonbound.loads(_nested(jsonbound.MAX_DEPTH))) == jsonbound.MAX_DEPTH
    with pytest.raises(jsonbound.TooDeep):
        jsonbound.loads(_nested(jsonbound.MAX_DEPTH + 1))


def test_json_nested_past_the_parsers_recursion_is_refused_not_crashed():
    with pytest.raises(jsonbound.TooDeep):
        jsonbound.loads(_nested(100_000))


async def _lines(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        for line in chunk.split(b"\n"):
            yield line


def _read(chunks: list[bytes]) -> list[tuple[str, object]]:
    async def read() -> list[tuple[str, object]]:
        return [event async for event in sse_events(_lines(chunks))]

    return asyncio.run(read())


def test_sse_frames_read_back_as_they_were_written():
    frames = [sse_frame("delta", {"text": "hé\nllo"}), sse_frame("done", {"usage": {"n": 1}})]

    assert _read(frames) == [("delta", {"text": "hé\nllo"}), ("done", {"usage": {"n": 1}})]


def test_an_sse_frame_too_deep_to_read_is_refused():
    frame = f"event: delta\ndata: {_nested(jsonbound.MAX_DEPTH + 1)}\n\n".encode()

    with pytest.raises(ValueError):
        _read([frame])


def test_a_request_id_is_kept_when_acceptable_and_replaced_otherwise():
    assert valid_request_id("req-1.a:b@c") == "req-1.a:b@c"
    assert valid_request_id("bad id\n") is None
    assert request_id_or_new("x" * 200) != "x" * 200
    with using_request_id("abc"):
        assert current_request_id() == "abc"
    assert current_request_id() == ""


def test_importing_the_wire_loads_no_framework_and_nothing_of_the_project():
    probe = (
        "import json, sys\n"
        "import wire, wire.events, wire.jsonbound, wire.logs, wire.sse\n"
        "roots = {name.split('.')[0] for name in sys.modules}\n"
        "print(json.dumps(sorted(roots)))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    roots = set(json.loads(ran.stdout))

    assert roots.isdisjoint({"django", "rest_framework", "channels", "celery", "aiohttp"})
    assert roots.isdisjoint({"config", "console", "agents", "scaling", "plumbing", "vmdriver"})
