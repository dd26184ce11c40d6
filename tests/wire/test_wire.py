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
from wire.sse import sse_events, sse_events_of_chunks, sse_frame

REPO = Path(__file__).resolve().parents[2]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_at_the_depth_bound_parses_and_past_it_is_refused():
    assert jsonbound.depth_of(jsonbound.loads(_nested(jsonbound.MAX_DEPTH))) == jsonbound.MAX_DEPTH
    with pytest.raises(jsonbound.TooDeep):
        jsonbound.loads(_nested(jsonbound.MAX_DEPTH + 1))


def test_json_with_few_brackets_is_read_and_deep_json_refused_either_way():
    limit = jsonbound.MAX_DEPTH
    shallow = '{"text": "[[[[ brackets in a string ]]]]", "n": [1, {"a": []}]}'
    assert jsonbound.loads(shallow) == json.loads(shallow)
    assert jsonbound.loads(shallow.encode()) == json.loads(shallow)
    deep = "[" * (limit + 1) + "]" * (limit + 1)
    with pytest.raises(jsonbound.TooDeep):
        jsonbound.loads(deep)
    with pytest.raises(jsonbound.TooDeep):
        jsonbound.loads(deep.encode())
    assert jsonbound.loads("[" * limit + "]" * limit) is not None


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


def _read_chunks(stream: bytes, size: int) -> list[tuple[str, object]]:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(stream), size):
            yield stream[start : start + size]

    async def read() -> list[tuple[str, object]]:
        return [event async for event in sse_events_of_chunks(pieces())]

    return asyncio.run(read())


def test_sse_frames_read_from_pieces_of_any_size_are_read_as_written():
    frames = [
        sse_frame("delta", {"text": "hé\nllo"}),
        sse_frame("tool", {"name": "bash", "input": {"cmd": ["ls", "-l"]}}),
        b'event: delta\r\ndata: {"text": "crlf"}\r\n\r\n',
        sse_frame("done", {"content": "hello"}),
    ]
    stream = b"".join(frames)
    expected = _read(frames)

    assert expected[2] == ("delta", {"text": "crlf"})
    for size in (1, 2, 3, 7, 16, len(stream)):
        assert _read_chunks(stream, size) == expected, size
    # A last frame without its blank line is read too, as line by line.
    assert _read_chunks(b"event: done\ndata: {}", 5) == [("done", {})]


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
