"""The agent runtime as a real process, with the fake Anthropic server standing in for the gateway.

The runtime speaks the Messages API to ``{AGENT_GATEWAY_URL}/v1/messages``, so ``FakeAnthropic``
can play the console's gateway here: it records what the runtime sends and scripts its replies.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.anthropic import Error, FakeAnthropic, Text, count_tokens
from tests.servers import Server, free_port, server_start, server_stop

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKEN = "agt_test-gateway-token"
MODEL = "claude-test-1"
SYSTEM = "You are a terse test agent."
CHAT = "/v1/agent/chat"


@dataclass
class Runtime(Server):
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)


def _spawn(log: Path, gateway_url: str, **env: str) -> Runtime:
    """Start ``python -m agents.runtime`` with a minimal environment and wait for /health."""
    port = free_port()
    full_env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "AGENT_ID": "agent-test",
        "AGENT_HOST": "127.0.0.1",
        "AGENT_PORT": str(port),
        "AGENT_GATEWAY_URL": gateway_url,
        "AGENT_GATEWAY_TOKEN": TOKEN,
        "AGENT_MODEL": MODEL,
        "AGENT_SYSTEM_PROMPT": SYSTEM,
        **env,
    }
    started = server_start(
        [sys.executable, "-m", "agents.runtime"],
        log=log,
        env=full_env,
        cwd=REPO_ROOT,
        url=f"http://127.0.0.1:{port}",
        health="/health",
        timeout=15,
    )
    return Runtime(started.process, started.log, started.url)


def _terminate(runtime: Runtime) -> None:
    server_stop(runtime, grace=5)


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeAnthropic]:
    """A fake gateway that, like the real one, refuses any credential but the agent's token."""
    with FakeAnthropic(required_api_key=TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def runtime(gateway: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    # The plain chat path, without tools (test_runtime_tools.py covers the tool loop), so that
    # token counts are those of the prompts alone.
    started = _spawn(
        tmp_path_factory.mktemp("runtime") / "log", gateway.base_url, AGENT_TOOLS="none"
    )
    yield started
    _terminate(started)


def _session() -> str:
    return f"sess-{uuid.uuid4()}"


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def _chat_requests(fake: FakeAnthropic) -> list[dict[str, Any]]:
    """The calls the runtime made, as they read without their cache marks (the runtime's
    caching tests check those on ``fake.requests``)."""
    return [_unmarked(r.body) for r in fake.requests if r.path == "/v1/messages"]


def _unmarked(body: dict[str, Any]) -> dict[str, Any]:
    def plain(blocks: list[Any]) -> Any:
        if len(blocks) == 1 and blocks[0].get("type") == "text" and "cache_control" in blocks[0]:
            return blocks[0]["text"]  # a string the runtime made a block to mark it
        return [{k: v for k, v in b.items() if k != "cache_control"} for b in blocks]

    body = dict(body)
    if isinstance(body.get("system"), list):
        body["system"] = plain(body["system"])
    body["messages"] = [
        m | {"content": plain(m["content"])} if isinstance(m["content"], list) else m
        for m in body["messages"]
    ]
    if body.get("tools"):
        body["tools"] = [
            {k: v for k, v in t.items() if k != "cache_control"} for t in body["tools"]
        ]
    return body


def _sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events, event, data = [], "", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            events.append((event, json.loads("\n".join(data))))
            event, data = "", []
    return events


def _metrics(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str):
    return metrics.get((name, frozenset(labels.items())), 0.0)


def test_health_and_ready_answer(runtime_http: httpx.Client) -> None:
    health = runtime_http.get("/health")
    ready = runtime_http.get("/ready")

    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["agent_id"], body["version"]) == ("ok", "agent-test", "0.1.0")
    assert body["timestamp"].endswith("Z")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True


def test_chat_returns_the_gateway_reply_with_the_usage_it_counted(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    prompt = "Hello there, world!"
    session = _session()

    response = runtime_http.post(CHAT, json={"prompt": prompt, "session_id": session})

    assert response.status_code == 200, response.text
    expected_in = count_tokens(f"{SYSTEM}\n{prompt}")
    expected_out = count_tokens(f"Echo: {prompt}")
    assert response.json() == {
        "session_id": session,
        "content": f"Echo: {prompt}",
        "usage": {
            "input_tokens": expected_in,
            "output_tokens": expected_out,
            "total_tokens": expected_in + expected_out,
        },
        "status": "completed",
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": [{"type": "text", "text": f"Echo: {prompt}"}]},
        ],
    }
    [sent] = _chat_requests(fake_gateway)
    assert sent["model"] == MODEL
    assert sent["max_tokens"] == 4096


def test_chat_passes_on_scripted_usage_exactly_and_makes_up_a_session_id(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    fake_gateway.enqueue(Text("Scripted answer.", input_tokens=1234, output_tokens=56))

    response = runtime_http.post(CHAT, json={"prompt": "hi", "max_tokens": 300})

    body = response.json()
    assert body["content"] == "Scripted answer."
    assert body["usage"] == {"input_tokens": 1234, "output_tokens": 56, "total_tokens": 1290}
    assert body["session_id"]
    assert _chat_requests(fake_gateway)[0]["max_tokens"] == 300


def test_only_a_session_the_console_named_goes_to_the_gateway(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    # The gateway refuses a session it does not know: one the runtime made up is not sent.
    session = _session()
    runtime_http.post(CHAT, json={"prompt": "named", "session_id": session})
    runtime_http.post(CHAT, json={"prompt": "unnamed"})
    named, unnamed = (r for r in fake_gateway.requests if r.path.endswith("/messages"))
    assert named.headers["x-console-session"] == session
    assert "x-console-session" not in unnamed.headers


def test_second_turn_sends_the_full_history_and_the_system_prompt(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    runtime_http.post(CHAT, json={"prompt": "First question", "session_id": session})

    response = runtime_http.post(CHAT, json={"prompt": "Second question", "session_id": session})

    assert response.json()["content"] == "Echo: Second question"
    first, second = _chat_requests(fake_gateway)
    assert first["system"] == second["system"] == SYSTEM
    assert second["messages"] == [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": [{"type": "text", "text": "Echo: First question"}]},
        {"role": "user", "content": "Second question"},
    ]


def test_sessions_keep_separate_histories(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    mine, theirs = _session(), _session()
    runtime_http.post(CHAT, json={"prompt": "mine one", "session_id": mine})
    runtime_http.post(CHAT, json={"prompt": "theirs one", "session_id": theirs})

    runtime_http.post(CHAT, json={"prompt": "mine two", "session_id": mine})

    last = _chat_requests(fake_gateway)[-1]["messages"]
    assert [m["content"] for m in last if m["role"] == "user"] == ["mine one", "mine two"]


def test_gateway_token_and_session_id_are_sent_as_headers(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()

    runtime_http.post(CHAT, json={"prompt": "hi", "session_id": session})

    [request] = fake_gateway.requests
    assert request.headers["x-api-key"] == TOKEN
    assert request.headers["x-console-session"] == session
    assert request.headers["anthropic-version"] == "2023-06-01"


@pytest.mark.parametrize(
    ("content", "code", "field"),
    [
        (b"{not json", "malformed_body", None),
        (b"", "malformed_body", None),
        (b"[1, 2]", "invalid_request", None),
        (b'{"max_tokens": 10}', "invalid_request", "prompt"),
        (b'{"prompt": "   "}', "invalid_request", "prompt"),
        (b'{"prompt": "hi", "max_tokens": "x"}', "invalid_request", "max_tokens"),
        (b'{"prompt": "hi", "max_tokens": 0}', "invalid_request", "max_tokens"),
        (b'{"prompt": "hi", "max_tokens": true}', "invalid_request", "max_tokens"),
        (b'{"prompt": "hi", "session_id": 7}', "invalid_request", None),
        (b'{"prompt": "hi", "keep_turns": -1}', "invalid_request", "keep_turns"),
        (b'{"prompt": "hi", "keep_turns": "1"}', "invalid_request", "keep_turns"),
        (b'{"prompt": "hi", "keep_turns": true}', "invalid_request", "keep_turns"),
    ],
)
def test_bad_input_is_refused_with_400(
    runtime_http: httpx.Client,
    fake_gateway: FakeAnthropic,
    content: bytes,
    code: str,
    field: str | None,
) -> None:
    response = runtime_http.post(
        CHAT, content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == code
    if field is not None:
        assert field in error["details"]
    assert fake_gateway.requests == []


def test_a_gateway_error_is_passed_back_and_the_failed_turn_is_forgotten(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    fake_gateway.enqueue(Error(429, message="slow down, please"))

    failed = runtime_http.post(CHAT, json={"prompt": "first try", "session_id": session})

    assert failed.status_code == 429
    error = _error(failed)
    assert (error["code"], error["message"]) == ("rate_limit_error", "slow down, please")

    retried = runtime_http.post(CHAT, json={"prompt": "second try", "session_id": session})

    assert retried.status_code == 200
    assert _chat_requests(fake_gateway)[-1]["messages"] == [
        {"role": "user", "content": "second try"}
    ]


def test_a_gateway_error_mid_session_keeps_the_earlier_turns(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    runtime_http.post(CHAT, json={"prompt": "turn one", "session_id": session})
    fake_gateway.enqueue(Error(529))
    failed = runtime_http.post(CHAT, json={"prompt": "lost turn", "session_id": session})
    assert failed.status_code == 529
    assert _error(failed)["code"] == "overloaded_error"

    runtime_http.post(CHAT, json={"prompt": "turn two", "session_id": session})

    messages = _chat_requests(fake_gateway)[-1]["messages"]
    assert len(messages) == 3
    assert [m["content"] for m in messages if m["role"] == "user"] == ["turn one", "turn two"]


def test_keep_turns_replaces_the_later_turns_and_a_failed_turn_puts_them_back(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    for prompt in ("one", "two", "three"):
        runtime_http.post(CHAT, json={"prompt": prompt, "session_id": session})

    # Regenerating the last turn: keep the first two, ask "three" again.
    again = runtime_http.post(
        CHAT, json={"prompt": "three", "session_id": session, "keep_turns": 2}
    )
    assert again.status_code == 200
    sent = _chat_requests(fake_gateway)[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["one", "two", "three"]
    assert len(sent) == 5

    # Editing the first prompt fails upstream: the session is left exactly as it was.
    fake_gateway.enqueue(Error(529))
    failed = runtime_http.post(
        CHAT, json={"prompt": "uno", "session_id": session, "keep_turns": 0, "stream": True}
    )
    assert _sse(failed)[-1][0] == "error"
    runtime_http.post(CHAT, json={"prompt": "four", "session_id": session})
    sent = _chat_requests(fake_gateway)[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["one", "two", "three", "four"]

    # Keeping more turns than there are keeps them all.
    runtime_http.post(CHAT, json={"prompt": "five", "session_id": session, "keep_turns": 99})
    sent = _chat_requests(fake_gateway)[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"][-2:] == ["four", "five"]


def test_stream_deltas_concatenate_to_the_done_content(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    prompt = "Please stream this rather long answer back, word by word."
    session = _session()
    fake_gateway.chunk_delay = 0.001

    with runtime_http.stream(
        "POST", CHAT, json={"prompt": prompt, "session_id": session, "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse(response)

    deltas = [data["text"] for event, data in events if event == "delta"]
    assert len(deltas) > 5
    assert [event for event, _ in events] == ["delta"] * len(deltas) + ["done"]
    done = events[-1][1]
    expected_in = count_tokens(f"{SYSTEM}\n{prompt}")
    expected_out = count_tokens(f"Echo: {prompt}")
    assert done == {
        "session_id": session,
        "content": "".join(deltas),
        "usage": {
            "input_tokens": expected_in,
            "output_tokens": expected_out,
            "total_tokens": expected_in + expected_out,
        },
        "status": "completed",
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": [{"type": "text", "text": done["content"]}]},
        ],
    }
    assert done["content"] == f"Echo: {prompt}"
    assert _chat_requests(fake_gateway)[0]["stream"] is True

    runtime_http.post(CHAT, json={"prompt": "and then?", "session_id": session})

    assert _chat_requests(fake_gateway)[-1]["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": f"Echo: {prompt}"}],
    }


def test_stream_gateway_error_ends_with_an_error_event_and_is_forgotten(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    fake_gateway.enqueue(Error(429, message="too many"))

    with runtime_http.stream(
        "POST", CHAT, json={"prompt": "lost", "session_id": session, "stream": True}
    ) as response:
        events = _sse(response)

    # With the gateway's status: the stream's own (200) was sent before the refusal came.
    error = {"code": "rate_limit_error", "message": "too many", "status": 429}
    assert events == [("error", error)]
    runtime_http.post(CHAT, json={"prompt": "kept", "session_id": session})
    assert _chat_requests(fake_gateway)[-1]["messages"] == [{"role": "user", "content": "kept"}]


def test_metrics_count_requests_tokens_errors_and_sessions(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    before = _metrics(runtime_http)
    fake_gateway.enqueue(Text("ok", input_tokens=100, output_tokens=7), Error(429))

    assert runtime_http.post(CHAT, json={"prompt": "count me", "session_id": _session()}).is_success
    assert runtime_http.post(CHAT, json={"prompt": "fail me"}).status_code == 429
    assert runtime_http.post(CHAT, content=b"nope").status_code == 400
    after = _metrics(runtime_http)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("agent_active_sessions") >= 1
    assert _value(after, "agent_active_sessions") >= 2
    assert moved("agent_requests_total", endpoint=CHAT, status="200") == 1
    assert moved("agent_requests_total", endpoint=CHAT, status="429") == 1
    assert moved("agent_requests_total", endpoint=CHAT, status="400") == 1
    assert moved("agent_request_duration_seconds_count", endpoint=CHAT) == 3
    assert moved("agent_request_duration_seconds_sum", endpoint=CHAT) > 0
    assert moved("agent_token_usage_total", type="input") == 100
    assert moved("agent_token_usage_total", type="output") == 7
    assert moved("agent_errors_total", error_type="rate_limit_error") == 1
    assert _value(after, "agent_requests_total", endpoint="/health", status="200") >= 1


def test_sessions_beyond_the_limit_are_refused_with_503(
    gateway: FakeAnthropic, tmp_path: Path
) -> None:
    gateway.reset()
    limited = _spawn(tmp_path / "log", gateway.base_url, AGENT_MAX_CONCURRENT_SESSIONS="2")
    try:
        with limited.client() as http:
            for session in ("one", "two"):
                assert http.post(CHAT, json={"prompt": "hi", "session_id": session}).is_success

            refused = http.post(CHAT, json={"prompt": "hi", "session_id": "three"})
            anonymous = http.post(CHAT, json={"prompt": "hi"})
            existing = http.post(CHAT, json={"prompt": "again", "session_id": "one"})
            ready = http.get("/ready")
    finally:
        _terminate(limited)

    assert refused.status_code == anonymous.status_code == 503
    error = _error(refused)
    assert error["code"] == "agent_at_capacity"
    assert error["details"] == {"max_concurrent_sessions": 2}
    assert existing.status_code == 200
    assert (ready.status_code, ready.json()) == (503, {"ready": False, "sessions": 2})
    assert len(_chat_requests(gateway)) == 3


def test_the_runtime_holds_no_anthropic_key(
    runtime: Runtime, runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    environ = Path(f"/proc/{runtime.process.pid}/environ").read_bytes()
    cmdline = Path(f"/proc/{runtime.process.pid}/cmdline").read_bytes()

    assert b"sk-ant" not in environ
    assert b"ANTHROPIC" not in environ
    assert b"sk-ant" not in cmdline
    assert TOKEN.encode() in environ  # it authenticates with its gateway token alone
    assert runtime_http.post(CHAT, json={"prompt": "still works"}).status_code == 200


def test_a_client_leaving_mid_stream_does_not_leave_a_dangling_turn(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    fake_gateway.chunk_delay = 0.02
    prompt = " ".join(f"word{n}" for n in range(60))

    with runtime_http.stream(
        "POST", CHAT, json={"prompt": prompt, "session_id": session, "stream": True}
    ) as response:
        first = next(response.iter_lines())
        assert first == "event: delta"
    # The connection is closed here, long before the reply is complete.

    fake_gateway.chunk_delay = 0.0
    after = runtime_http.post(CHAT, json={"prompt": "are you there?", "session_id": session})

    assert after.status_code == 200
    assert _chat_requests(fake_gateway)[-1]["messages"] == [
        {"role": "user", "content": "are you there?"}
    ]


def test_a_failed_first_turn_frees_its_session_slot(gateway: FakeAnthropic, tmp_path: Path) -> None:
    gateway.reset()
    limited = _spawn(tmp_path / "log", gateway.base_url, AGENT_MAX_CONCURRENT_SESSIONS="1")
    try:
        with limited.client() as http:
            gateway.enqueue(Error(429, "rate_limit_error", "slow down"))
            failed = http.post(CHAT, json={"prompt": "hi"})
            later = http.post(CHAT, json={"prompt": "hi again"})
            ready = http.get("/ready")
    finally:
        _terminate(limited)

    assert failed.status_code == 429
    assert later.status_code == 200, later.text
    assert ready.json() == {"ready": False, "sessions": 1}


def test_a_tcp_route_carries_the_gateway_urls_own_host(
    gateway: FakeAnthropic, tmp_path: Path
) -> None:
    """As in a microVM: the URL names the console, SANDBOX_GATEWAY is the way there."""
    gateway.reset()
    routed = _spawn(
        tmp_path / "log",
        "http://console.example:8000",
        SANDBOX_GATEWAY=f"tcp:127.0.0.1:{gateway.port}",
        AGENT_TOOLS="none",
    )
    try:
        with routed.client() as http:
            reply = http.post(CHAT, json={"prompt": "hi"})
    finally:
        _terminate(routed)

    assert reply.status_code == 200, reply.text
    [request] = gateway.requests
    assert request.path == "/v1/messages"
    assert request.headers["host"] == "console.example:8000"
