"""Tests driving the fake Messages API with the real ``anthropic`` SDK."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.fakes.anthropic import Error, FakeAnthropic, Hang, Text, ToolUse, count_tokens
from tests.polling import eventually
from tests.servers import server_start, server_stop

MODEL = "claude-test-1"
USER = [{"role": "user", "content": "Hello there, world!"}]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAnthropic) -> FakeAnthropic:
    server.reset()
    server.chunk_delay = 0.0
    server.required_api_key = None
    return server


def client(fake: FakeAnthropic, **kwargs: object) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", "sk-test")
    return anthropic.Anthropic(base_url=fake.base_url, **kwargs)  # type: ignore[arg-type]


def test_count_tokens_rule() -> None:
    assert count_tokens("") == 0
    assert count_tokens("   ") == 1
    assert count_tokens("Hello there, world!") == 5
    assert count_tokens("a.b") == 2


def test_non_streamed_echo_with_exact_usage(fake: FakeAnthropic) -> None:
    msg = client(fake).messages.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=USER
    )
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Echo: Hello there, world!"
    assert msg.model == MODEL and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    # "Be brief." = 2 words + 1 dot; the user text = 3 words + 2 marks.
    assert msg.usage.input_tokens == 3 + 5
    assert msg.usage.output_tokens == count_tokens("Echo: Hello there, world!") == 7
    assert msg.usage.cache_creation_input_tokens == 0
    assert msg.usage.cache_read_input_tokens == 0

    (req,) = fake.requests
    assert (req.method, req.path) == ("POST", "/v1/messages")
    assert req.api_key == "sk-test"
    assert "anthropic-version" in req.headers
    assert req.body["max_tokens"] == 100


def test_raw_response_shape(fake: FakeAnthropic) -> None:
    resp = httpx.post(
        fake.base_url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["request-id"].startswith("req_")
    body = resp.json()
    assert set(body) == {
        "id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage",
    }  # fmt: skip
    assert body["content"] == [{"type": "text", "text": "Echo: hi"}]


def test_list_content_and_count_tokens_endpoint(fake: FakeAnthropic) -> None:
    c = client(fake)
    content = [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]
    messages = [{"role": "user", "content": content}]
    msg = c.messages.create(model=MODEL, max_tokens=50, messages=messages)
    assert msg.content[0].text == "Echo: one two"
    counted = c.messages.count_tokens(model=MODEL, messages=messages)
    assert counted.input_tokens == msg.usage.input_tokens == 2


def test_streaming_matches_non_streamed(fake: FakeAnthropic) -> None:
    c = client(fake)
    words = "The quick brown fox jumps over the lazy dog, twice."
    fake.enqueue(Text(words), Text(words))
    plain = c.messages.create(model=MODEL, max_tokens=100, messages=USER)
    pieces: list[str] = []
    with c.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        for text in stream.text_stream:
            pieces.append(text)
        final = stream.get_final_message()
    assert len(pieces) > 3
    assert "".join(pieces) == words == plain.content[0].text == final.content[0].text
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.usage.output_tokens == plain.usage.output_tokens == count_tokens(words)
    assert final.stop_reason == plain.stop_reason == "end_turn"


def test_raw_sse_event_sequence(fake: FakeAnthropic) -> None:
    body = {"model": MODEL, "max_tokens": 10, "stream": True, "messages": USER}
    with httpx.stream("POST", fake.base_url + "/v1/messages", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        frames = resp.read().decode().split("\n\n")
    events = [f.split("\n")[0].removeprefix("event: ") for f in frames if f]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[3:-3]) == {"content_block_delta"}


def test_tool_use_round_trip(fake: FakeAnthropic) -> None:
    c = client(fake)
    tools = [{"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}]
    fake.enqueue(ToolUse("lookup", {"q": "weather", "n": 3}, id="toolu_1", text="Checking."))
    msg = c.messages.create(model=MODEL, max_tokens=100, tools=tools, messages=USER)
    assert msg.stop_reason == "tool_use"
    text, tool = msg.content
    assert text.type == "text" and text.text == "Checking."
    assert tool.type == "tool_use" and tool.id == "toolu_1" and tool.name == "lookup"
    assert tool.input == {"q": "weather", "n": 3}

    follow_up = [
        *USER,
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
        },
    ]
    answer = c.messages.create(model=MODEL, max_tokens=100, tools=tools, messages=follow_up)
    assert answer.content[0].text == "Tool result: sunny"
    assert answer.usage.input_tokens > msg.usage.input_tokens


def test_tool_use_streamed(fake: FakeAnthropic) -> None:
    fake.enqueue(ToolUse("lookup", {"query": "a longer query string", "limit": 10}))
    with client(fake).messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        final = stream.get_final_message()
    (tool,) = final.content
    assert tool.type == "tool_use" and tool.id.startswith("toolu_")
    assert tool.input == {"query": "a longer query string", "limit": 10}
    assert final.stop_reason == "tool_use"


def test_rate_limit_without_retries(fake: FakeAnthropic) -> None:
    fake.enqueue(Error(429, "rate_limit_error", "slow down", retry_after=1))
    with pytest.raises(anthropic.RateLimitError) as info:
        client(fake, max_retries=0).messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.body["error"] == {"type": "rate_limit_error", "message": "slow down"}


def test_rate_limit_then_success_with_retries(fake: FakeAnthropic) -> None:
    fake.enqueue(Error(429, "rate_limit_error", "slow down", retry_after=0.05))
    msg = client(fake, max_retries=2).messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert msg.content[0].text == "Echo: Hello there, world!"
    assert len(fake.requests) == 2


def test_overloaded_without_retries(fake: FakeAnthropic) -> None:
    fake.enqueue(Error(529, "overloaded_error", "Overloaded"))
    with pytest.raises(anthropic.APIStatusError) as info:
        client(fake, max_retries=0).messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert isinstance(info.value, anthropic.InternalServerError)
    assert info.value.status_code == 529


def test_scripted_error_on_stream_is_plain_http_error(fake: FakeAnthropic) -> None:
    fake.enqueue(Error(500, "api_error", "boom"))
    c = client(fake, max_retries=0)
    with (
        pytest.raises(anthropic.InternalServerError),
        c.messages.stream(model=MODEL, max_tokens=10, messages=USER) as stream,
    ):
        stream.get_final_message()
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": MODEL, "messages": USER}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 0, "messages": USER}, "max_tokens"),
        ({"max_tokens": 5, "messages": USER}, "model"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
    ],
)
def test_validation_errors(fake: FakeAnthropic, body: dict, fragment: str) -> None:
    resp = httpx.post(fake.base_url + "/v1/messages", json=body)
    assert resp.status_code == 400
    error = resp.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]


def test_bad_json_and_unknown_path(fake: FakeAnthropic) -> None:
    resp = httpx.post(fake.base_url + "/v1/messages", content=b"{nope")
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    resp = httpx.get(fake.base_url + "/v1/models")
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "not_found_error"
    assert [r.path for r in fake.requests] == ["/v1/messages", "/v1/models"]


def test_max_tokens_truncation(fake: FakeAnthropic) -> None:
    fake.enqueue(Text("one two three four five six"))
    msg = client(fake).messages.create(model=MODEL, max_tokens=3, messages=USER)
    assert msg.content[0].text.strip() == "one two three"
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 3


def test_stop_sequences(fake: FakeAnthropic) -> None:
    fake.enqueue(Text("alpha beta STOP gamma END"), Text("alpha beta STOP gamma"))
    c = client(fake)
    msg = c.messages.create(
        model=MODEL, max_tokens=100, stop_sequences=["END", "STOP"], messages=USER
    )
    assert msg.content[0].text == "alpha beta "
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "STOP")
    with c.messages.stream(
        model=MODEL, max_tokens=100, stop_sequences=["STOP"], messages=USER
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "alpha beta "
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "STOP")


def test_scripted_usage_override(fake: FakeAnthropic) -> None:
    fake.enqueue(Text("hi", input_tokens=7, output_tokens=9, cache_read_input_tokens=4))
    usage = client(fake).messages.create(model=MODEL, max_tokens=10, messages=USER).usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (7, 9, 4)


def test_required_api_key(fake: FakeAnthropic) -> None:
    fake.required_api_key = "right"
    with pytest.raises(anthropic.AuthenticationError):
        client(fake, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=10, messages=USER
        )
    ok = client(fake, api_key="right").messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert ok.content[0].text.startswith("Echo:")
    body = {"model": MODEL, "max_tokens": 10, "messages": USER}
    url = fake.base_url + "/v1/messages"
    assert httpx.post(url, json=body, headers={"x-api-key": "right"}).status_code == 200
    assert httpx.post(url, json=body, headers={"x-api-key": "nope"}).status_code == 401


def test_client_disconnect_mid_stream(fake: FakeAnthropic) -> None:
    fake.chunk_delay = 0.02
    fake.enqueue(Text(" ".join(f"word{i}" for i in range(200))))
    with client(fake).messages.stream(model=MODEL, max_tokens=1000, messages=USER) as stream:
        for _ in stream.text_stream:
            break
    assert eventually(lambda: fake.disconnects == 1, 3.0)


def test_hang_and_client_timeout(fake: FakeAnthropic) -> None:
    fake.enqueue(Hang(5))
    c = client(fake, max_retries=0, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        c.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert time.monotonic() - started < 2
    assert eventually(lambda: fake.disconnects == 1, 3.0)
    fake.enqueue(Hang(0.05))
    assert client(fake).messages.create(model=MODEL, max_tokens=10, messages=USER).content


def test_async_client(fake: FakeAnthropic) -> None:
    async def run() -> tuple[str, str]:
        c = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="sk-test")
        msg = await c.messages.create(model=MODEL, max_tokens=50, messages=USER)
        async with c.messages.stream(model=MODEL, max_tokens=50, messages=USER) as stream:
            streamed = "".join([t async for t in stream.text_stream])
        await c.close()
        return msg.content[0].text, streamed

    assert asyncio.run(run()) == ("Echo: Hello there, world!", "Echo: Hello there, world!")


def test_cli_prints_url_and_serves(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tests.fakes.anthropic", "--port", "0"]
    cli = server_start(command, log=tmp_path / "fake.log")
    try:
        lines = eventually(lambda: cli.output().splitlines(keepends=True), 10)
        line = lines[0].strip() if lines else ""
        assert line.startswith("FAKE_ANTHROPIC_URL=http://127.0.0.1:")
        url = line.split("=", 1)[1]
        body = {"model": MODEL, "max_tokens": 10, "messages": USER}
        assert httpx.post(url + "/v1/messages", json=body).status_code == 200
    finally:
        cli.process.terminate()
        returncode = cli.process.wait(timeout=5)
        server_stop(cli)
    assert returncode == 0


def _cached_call(fake: FakeAnthropic, system: str, *prompts: str) -> dict[str, int]:
    """A call with the system prompt and the last prompt marked, as the runtime marks them."""
    messages: list[dict[str, object]] = []
    for n, prompt in enumerate(prompts):
        block: dict[str, object] = {"type": "text", "text": prompt}
        if n == len(prompts) - 1:
            block["cache_control"] = {"type": "ephemeral"}
        messages.append({"role": "user", "content": [block]})
        if n < len(prompts) - 1:
            messages.append({"role": "assistant", "content": "ok"})
    response = client(fake).messages.create(
        model="m",
        max_tokens=50,
        system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        messages=messages,  # type: ignore[arg-type]
    )
    return response.usage.model_dump()


def test_a_cache_hit_needs_the_same_prefix_written_before(fake: FakeAnthropic) -> None:
    fake.cache_min_tokens = 5
    system = "You are a careful assistant who answers in full sentences."
    try:
        first = _cached_call(fake, system, "one two three four five")
        again = _cached_call(fake, system, "one two three four five", "six seven")
        other = _cached_call(fake, system + " Briefly.", "one two three four five")
    finally:
        fake.cache_min_tokens = 1024

    total = count_tokens(f"{system}\none two three four five")
    assert (first["cache_read_input_tokens"], first["cache_creation_input_tokens"]) == (0, total)
    assert first["input_tokens"] == 0
    # The next call reads all the first wrote, and writes what follows up to its breakpoint.
    assert again["cache_read_input_tokens"] == total
    assert again["cache_creation_input_tokens"] == count_tokens("ok\nsix seven")
    # A different system prompt is a different prefix: nothing to read.
    assert other["cache_read_input_tokens"] == 0


def test_a_prefix_under_the_minimum_is_not_cached(fake: FakeAnthropic) -> None:
    first = _cached_call(fake, "Short.", "hi")
    again = _cached_call(fake, "Short.", "hi")
    assert first["cache_creation_input_tokens"] == again["cache_read_input_tokens"] == 0
    assert again["input_tokens"] == count_tokens("Short.\nhi")


def test_more_than_four_breakpoints_are_refused(fake: FakeAnthropic) -> None:
    mark = {"type": "ephemeral"}
    blocks = [{"type": "text", "text": f"part {n}", "cache_control": mark} for n in range(5)]
    response = httpx.post(
        f"{fake.base_url}/v1/messages",
        json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": blocks}]},
    )
    assert response.status_code == 400
    assert "A maximum of 4 blocks with cache_control" in response.json()["error"]["message"]
