"""The loop's cache marks, compaction and history hand-back: the pure pieces, then a runtime
process against the fake gateway, which caches prefixes as Anthropic does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agents.runtime.loop import (
    SUMMARY_PREFIX,
    cache_marked,
    compactable,
    estimate_tokens,
    turn_starts,
)
from tests.agents.runtime.test_server import (
    CHAT,
    SYSTEM,
    TOKEN,
    Runtime,
    _chat_requests,
    _spawn,
    _terminate,
)
from tests.fakes.anthropic import FakeAnthropic, Text, ToolUse

EPHEMERAL = {"type": "ephemeral"}
CONTEXT = 2000  # tokens: compaction starts past half of it
MAX_TOKENS = 100


def _tool_turn(prompt: str, use_id: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": prompt},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": use_id, "name": "read_file", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use_id, "content": "x" * 400}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
    ]


def test_cache_marks_go_on_the_system_prompt_and_the_last_message_only() -> None:
    history = [*_tool_turn("first", "t1"), {"role": "user", "content": "second"}]
    tools = [{"name": "a"}, {"name": "b"}]

    system, marked_tools, messages = cache_marked("Be brief.", tools, history)

    assert system == [{"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}]
    assert marked_tools == tools
    assert messages[:-1] == history[:-1]
    assert messages[-1] == {
        "role": "user",
        "content": [{"type": "text", "text": "second", "cache_control": EPHEMERAL}],
    }
    assert history[-1] == {"role": "user", "content": "second"}  # the history is not marked
    # Without a system prompt the last tool carries the mark.
    _, marked_tools, _ = cache_marked("", tools, history)
    assert marked_tools == [{"name": "a"}, {"name": "b", "cache_control": EPHEMERAL}]


def test_compaction_folds_whole_turns_and_never_the_current_one() -> None:
    history = [
        *_tool_turn("one", "t1"),
        *_tool_turn("two", "t2"),
        *_tool_turn("three", "t3"),
        {"role": "user", "content": "now"},
    ]
    starts = turn_starts(history)
    assert starts == [0, 4, 8, 12]

    # A budget the last two turns fit in: the first alone goes.
    assert compactable(history, 12, estimate_tokens(history[4:])) == 4
    # None fits: every turn before the current one goes, the current one stays.
    assert compactable(history, 12, 0) == 12
    # Nothing before the current turn: nothing to fold.
    assert compactable(history[12:], 0, 0) == 0
    # A cut lands on a prompt, so a tool_use is never parted from its tool_result.
    for budget in range(0, estimate_tokens(history), 50):
        assert compactable(history, 12, budget) in starts


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(required_api_key=TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def runtime(gateway: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("loop")
    (root / "notes.txt").write_text("The launch code is 4242.\n")
    started = _spawn(
        root / "log",
        gateway.base_url,
        AGENT_TOOLS="read_file",
        AGENT_WORKSPACE=str(root),
        AGENT_CONTEXT_TOKENS=str(CONTEXT),
        AGENT_COMPACT_PERCENT="50",
    )
    yield started
    _terminate(started)


@pytest.fixture
def fake(gateway: FakeAnthropic) -> Iterator[FakeAnthropic]:
    gateway.reset()
    gateway.cache_min_tokens = 20
    yield gateway
    gateway.cache_min_tokens = 1024


def _chat(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post(CHAT, json={"max_tokens": MAX_TOKENS} | body)


def test_a_tool_round_reads_the_prefix_the_call_before_wrote(
    runtime_http: httpx.Client, fake: FakeAnthropic
) -> None:
    session = f"sess-{uuid.uuid4()}"
    fake.enqueue(ToolUse("read_file", {"path": "notes.txt"}), Text("The code is 4242."))

    response = _chat(runtime_http, prompt="What is the launch code?", session_id=session)

    assert response.status_code == 200, response.text
    first, second = (r.body for r in fake.requests)
    assert first["system"][0]["cache_control"] == EPHEMERAL
    assert second["messages"][-1]["content"][-1]["cache_control"] == EPHEMERAL
    written, read = fake.answered
    assert written["cache_read_input_tokens"] == 0 and written["cache_creation_input_tokens"] > 0
    # The second call read everything the first wrote, and wrote only what came since.
    assert read["cache_read_input_tokens"] == written["cache_creation_input_tokens"]
    assert 0 < read["cache_creation_input_tokens"] < read["cache_read_input_tokens"]


def test_a_runtime_without_the_session_asks_for_its_history_then_continues_it(
    runtime_http: httpx.Client, fake: FakeAnthropic
) -> None:
    session = f"sess-{uuid.uuid4()}"
    stored = _tool_turn("Read the notes.", "toolu_earlier")

    refused = _chat(runtime_http, prompt="And then?", session_id=session, turns=1)

    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "history_required"
    assert refused.json()["error"]["details"] == {"turns": 0}
    assert fake.requests == []

    sent = _chat(runtime_http, prompt="And then?", session_id=session, turns=1, history=stored)

    assert sent.status_code == 200, sent.text
    [request] = _chat_requests(fake)
    assert request["messages"] == [*stored, {"role": "user", "content": "And then?"}]
    assert sent.json()["messages"][0] == {"role": "user", "content": "And then?"}
    # It now holds both turns: the next one needs no history.
    assert _chat(runtime_http, prompt="Thanks", session_id=session, turns=2).status_code == 200
    assert _chat(runtime_http, prompt="Hm", session_id=session, turns=5).status_code == 409
    # The console left out older turns that did not fit: they count as held.
    trimmed = _chat(
        runtime_http, prompt="Hm", session_id=session, turns=5, history=stored, history_left_out=4
    )
    assert trimmed.status_code == 200, trimmed.text
    assert _chat(runtime_http, prompt="Go on", session_id=session, turns=6).status_code == 200


def test_a_malformed_history_is_refused(runtime_http: httpx.Client, fake: FakeAnthropic) -> None:
    for history in ("text", [{"role": "system", "content": "x"}], [{"role": "user"}], [3]):
        response = _chat(runtime_http, prompt="hi", history=history)
        assert response.status_code == 400, history
        assert response.json()["error"]["code"] == "invalid_request"


def test_a_long_session_is_compacted_into_a_summary_keeping_the_current_turn(
    runtime_http: httpx.Client, fake: FakeAnthropic
) -> None:
    session = f"sess-{uuid.uuid4()}"
    long = " ".join(f"fact{n} is {n * 7}." for n in range(120))  # about 500 tokens
    fake.enqueue(
        ToolUse("read_file", {"path": "notes.txt"}),
        Text("Noted: " + long),
    )
    # A reply as long as this turn's is nearer the context window than it may go.
    room = CONTEXT // 2
    first = _chat(runtime_http, prompt=long, session_id=session, max_tokens=room)
    assert first.status_code == 200
    assert len(_chat_requests(fake)) == 2  # nothing before the current turn to compact
    fake.reset()
    fake.enqueue(Text("The user listed facts; the notes give the launch code 4242."))

    response = _chat(runtime_http, prompt="What was the code?", session_id=session, max_tokens=room)

    assert response.status_code == 200, response.text
    summarise, answer = _chat_requests(fake)
    # One extra call writes the summary from the first turn, tool call and result included.
    assert "compact" in summarise["system"] and "tools" not in summarise
    [asked] = summarise["messages"]
    assert "fact119 is 833." in asked["content"] and "The launch code is 4242." in asked["content"]
    assert "read_file" in asked["content"]
    # The turn is sent with the summary in place of the first turn, the prompt intact.
    summary, ack, prompt = answer["messages"]
    assert summary["content"][0]["text"] == (
        SUMMARY_PREFIX + "The user listed facts; the notes give the launch code 4242."
    )
    assert ack["role"] == "assistant"
    assert prompt == {"role": "user", "content": "What was the code?"}
    # The turn's messages are its own, the summary is not among them.
    assert [m["role"] for m in response.json()["messages"]] == ["user", "assistant"]
    # The folded turn still counts: the console's count matches, a replay before it does not.
    assert _chat(runtime_http, prompt="ok", session_id=session, turns=2).status_code == 200
    again = _chat(runtime_http, prompt="redo", session_id=session, turns=3, keep_turns=0)
    assert again.json()["error"]["code"] == "history_required"
    assert SYSTEM
