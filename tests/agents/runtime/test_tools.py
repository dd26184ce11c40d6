"""Claude's tool-use loop in the agent runtime, run as a real process against the fake gateway.

The fake scripts ``tool_use`` replies with ``ToolUse``; once the runtime answers with
``tool_result`` blocks, its default reply is ``"Tool result: <text>"``, so what a tool returned
comes back as the turn's content.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.runtime.tools import TOOL_DEFINITIONS
from tests.agents.runtime.test_server import (
    CHAT,
    REPO_ROOT,
    SYSTEM,
    TOKEN,
    Runtime,
    _chat_requests,
    _metrics,
    _spawn,
    _sse,
    _terminate,
    _value,
)
from tests.fakes.anthropic import Error, FakeAnthropic, ToolUse, count_tokens

OUTPUT_LIMIT = 1000
MAX_ROUNDS = 3
OTHER_SECRET = "sekrit-do-not-leak"


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(required_api_key=TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tools")
    (root / "workspace").mkdir()
    (root / "outside.txt").write_text("not for the agent\n")
    (root / "workspace" / "etc-link").symlink_to("/etc")
    (root / "workspace" / "passwd-link").symlink_to("/etc/passwd")
    (root / "workspace" / "sibling-link").symlink_to(root / "outside.txt")
    return root / "workspace"


@pytest.fixture(scope="module")
def runtime(
    gateway: FakeAnthropic, workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    started = _spawn(
        tmp_path_factory.mktemp("runtime") / "log",
        gateway.base_url,
        AGENT_WORKSPACE=str(workspace),
        AGENT_TOOL_OUTPUT_LIMIT=str(OUTPUT_LIMIT),
        AGENT_MAX_TOOL_ROUNDS=str(MAX_ROUNDS),
        BUILD_API_KEY=OTHER_SECRET,
        DB_PASSWORD=OTHER_SECRET,
    )
    yield started
    _terminate(started)


def _session() -> str:
    return f"sess-{uuid.uuid4()}"


def _chat(client: httpx.Client, prompt: str = "go", **body: Any) -> dict[str, Any]:
    response = client.post(CHAT, json={"prompt": prompt, **body}, timeout=30.0)
    assert response.status_code == 200, response.text
    return response.json()


def _tool_results(fake: FakeAnthropic, call: int = 1) -> list[dict[str, Any]]:
    """The tool_result blocks of the last message sent in gateway call number ``call``."""
    last = _chat_requests(fake)[call]["messages"][-1]
    assert last["role"] == "user"
    assert all(block["type"] == "tool_result" for block in last["content"])
    return last["content"]


def _result(fake: FakeAnthropic) -> dict[str, Any]:
    [result] = _tool_results(fake)
    return result


def _stream(client: httpx.Client, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with client.stream("POST", CHAT, json={**body, "stream": True}, timeout=30.0) as response:
        assert response.status_code == 200
        return _sse(response)


def _input_tokens(fake: FakeAnthropic, body: dict[str, Any]) -> int:
    """The fake's own count for a request body, asked of its count_tokens endpoint."""
    counted = {k: v for k, v in body.items() if k in ("model", "system", "messages", "tools")}
    response = httpx.post(
        f"{fake.base_url}/v1/messages/count_tokens", json=counted, headers={"x-api-key": TOKEN}
    )
    return int(response.json()["input_tokens"])


def test_every_request_offers_the_tools(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    _chat(runtime_http, "hello")

    [sent] = _chat_requests(fake_gateway)
    assert [tool["name"] for tool in sent["tools"]] == ["run_command", "read_file", "write_file"]
    for tool in sent["tools"]:
        assert set(tool) == {"name", "description", "input_schema"}
        assert tool["input_schema"]["type"] == "object"


def test_write_file_creates_the_file_and_the_turn_ends_with_the_final_reply(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic, workspace: Path
) -> None:
    session = _session()
    fake_gateway.enqueue(
        ToolUse("write_file", {"path": "notes/hello.txt", "content": "hi there\n"}, id="toolu_w1")
    )

    body = _chat(runtime_http, "write it", session_id=session)

    assert (workspace / "notes" / "hello.txt").read_text() == "hi there\n"
    assert body["content"] == "Tool result: wrote 9 bytes to notes/hello.txt"
    first, second = _chat_requests(fake_gateway)
    assert second["messages"] == [
        {"role": "user", "content": "write it"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_w1",
                    "name": "write_file",
                    "input": {"path": "notes/hello.txt", "content": "hi there\n"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_w1",
                    "content": "wrote 9 bytes to notes/hello.txt",
                    "is_error": False,
                }
            ],
        },
    ]
    assert second["tools"] == first["tools"]

    _chat(runtime_http, "and now?", session_id=session)

    history = _chat_requests(fake_gateway)[-1]["messages"]
    assert len(history) == 5
    assert history[3] == {
        "role": "assistant",
        "content": [{"type": "text", "text": body["content"]}],
    }


def test_read_file_reads_a_workspace_file(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic, workspace: Path
) -> None:
    (workspace / "readme.txt").write_text("read me, please\n")
    fake_gateway.enqueue(ToolUse("read_file", {"path": "./readme.txt"}))

    body = _chat(runtime_http)

    assert _result(fake_gateway)["is_error"] is False
    assert _result(fake_gateway)["content"] == "read me, please\n"
    assert body["content"] == "Tool result: read me, please\n"


def test_run_command_output_goes_back_to_the_gateway(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic, workspace: Path
) -> None:
    fake_gateway.enqueue(ToolUse("run_command", {"command": "echo round-trip-$((6 * 7)); pwd"}))

    body = _chat(runtime_http)

    result = _result(fake_gateway)
    assert result["is_error"] is False
    assert result["content"] == f"exit code: 0\nround-trip-42\n{workspace}\n"
    assert body["content"] == f"Tool result: {result['content']}"


def test_a_failing_command_is_an_error_with_its_exit_code(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    fake_gateway.enqueue(ToolUse("run_command", {"command": "echo oops >&2; exit 3"}))

    _chat(runtime_http)

    assert _result(fake_gateway) | {"tool_use_id": None} == {
        "type": "tool_result",
        "tool_use_id": None,
        "content": "exit code: 3\noops\n",
        "is_error": True,
    }


def _running(marker: bytes) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue  # it ended meanwhile
    return found


def test_a_command_past_its_time_limit_is_killed_with_everything_it_started(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    command = "sleep 29.0417 & sleep 29.0418; echo never"
    fake_gateway.enqueue(ToolUse("run_command", {"command": command, "timeout_seconds": 1}))

    started = time.monotonic()
    body = _chat(runtime_http)
    elapsed = time.monotonic() - started

    assert elapsed < 5
    result = _result(fake_gateway)
    assert result["is_error"] is True
    assert result["content"].startswith("the command timed out after 1 s and was killed")
    assert "never" not in result["content"]
    assert body["content"].startswith("Tool result: the command timed out")
    assert _running(b"29.041") == []


def test_background_processes_do_not_outlive_the_command(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    fake_gateway.enqueue(ToolUse("run_command", {"command": "sleep 28.0419 & echo started"}))

    started = time.monotonic()
    _chat(runtime_http)

    assert time.monotonic() - started < 5
    assert _result(fake_gateway)["content"] == "exit code: 0\nstarted\n"
    assert _running(b"28.0419") == []


def test_long_output_is_truncated_with_a_marker(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    fake_gateway.enqueue(ToolUse("run_command", {"command": "head -c 5000 /dev/zero | tr '\\0' x"}))

    _chat(runtime_http)

    result = _result(fake_gateway)
    assert result["is_error"] is False
    assert result["content"] == (
        "exit code: 0\n"
        + "x" * OUTPUT_LIMIT
        + f"\n[output truncated: 5000 bytes in all, only the first {OUTPUT_LIMIT} are shown]"
    )


@pytest.mark.parametrize(
    "path",
    ["../../etc/passwd", "/etc/passwd", "etc-link/passwd", "passwd-link", "sibling-link"],
)
def test_read_file_outside_the_workspace_is_refused(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic, path: str
) -> None:
    fake_gateway.enqueue(ToolUse("read_file", {"path": path}))

    _chat(runtime_http)

    result = _result(fake_gateway)
    assert result["is_error"] is True
    assert result["content"].startswith(f"read_file: {path!r} is outside the workspace")
    assert "root:" not in result["content"]


@pytest.mark.parametrize("path", ["../escaped.txt", "/tmp/escaped-by-the-agent.txt"])
def test_write_file_outside_the_workspace_is_refused(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic, workspace: Path, path: str
) -> None:
    fake_gateway.enqueue(ToolUse("write_file", {"path": path, "content": "escaped"}))

    _chat(runtime_http)

    result = _result(fake_gateway)
    assert result["is_error"] is True
    assert "is outside the workspace" in result["content"]
    assert not (workspace.parent / "escaped.txt").exists()
    assert not Path("/tmp/escaped-by-the-agent.txt").exists()


def test_bad_tool_input_and_unknown_tools_are_errors_claude_is_told_about(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    fake_gateway.enqueue(
        ToolUse("read_file", {"file": "readme.txt"}),
        ToolUse("launch_rockets", {}),
    )

    _chat(runtime_http)

    assert _result(fake_gateway) | {"tool_use_id": None} == {
        "type": "tool_result",
        "tool_use_id": None,
        "content": "read_file: path must be a string",
        "is_error": True,
    }
    assert (
        _tool_results(fake_gateway, call=2)[0]["content"]
        == "there is no tool named 'launch_rockets'"
    )
    assert _tool_results(fake_gateway, call=2)[0]["is_error"] is True


def test_commands_do_not_see_the_gateway_token_or_other_secrets(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    fake_gateway.enqueue(ToolUse("run_command", {"command": "env"}))

    _chat(runtime_http)

    output = _result(fake_gateway)["content"]
    assert "PATH=/usr/bin:/bin" in output  # it did print the environment
    assert TOKEN not in output
    assert "AGENT_GATEWAY_TOKEN" not in output
    assert OTHER_SECRET not in output
    assert "AGENT_ID=agent-test" in output


def test_usage_is_summed_over_every_call_of_the_turn(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    tool_input = {"command": "echo counted"}
    fake_gateway.enqueue(ToolUse("run_command", tool_input))

    body = _chat(runtime_http)

    first, second = _chat_requests(fake_gateway)
    expected_in = _input_tokens(fake_gateway, first) + _input_tokens(fake_gateway, second)
    expected_out = count_tokens(json.dumps(tool_input)) + count_tokens(body["content"])
    assert body["usage"] == {
        "input_tokens": expected_in,
        "output_tokens": expected_out,
        "total_tokens": expected_in + expected_out,
    }


def test_the_stream_sends_tool_events_between_the_replies_deltas(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    fake_gateway.chunk_delay = 0.001
    tool_input = {"command": "echo streamed output"}
    fake_gateway.enqueue(
        ToolUse("run_command", tool_input, id="toolu_s1", text="Let me run that now.")
    )

    events = _stream(runtime_http, {"prompt": "stream it", "session_id": session})

    kinds = [event for event, _ in events]
    tool_at = kinds.index("tool")
    assert kinds == ["delta"] * tool_at + ["tool"] + ["delta"] * (len(kinds) - tool_at - 2) + [
        "done"
    ]
    before = "".join(data["text"] for event, data in events[:tool_at])
    after = "".join(data["text"] for event, data in events[tool_at + 1 : -1])
    assert before == "Let me run that now."
    assert events[tool_at][1] == {
        "name": "run_command",
        "input": tool_input,
        "is_error": False,
        "output": "exit code: 0\nstreamed output\n",
    }
    done = events[-1][1]
    assert done["content"] == after == "Tool result: exit code: 0\nstreamed output\n"
    assert done["status"] == "completed"
    assert done["usage"]["total_tokens"] == (
        done["usage"]["input_tokens"] + done["usage"]["output_tokens"]
    )
    first, second = _chat_requests(fake_gateway)
    assert done["usage"]["input_tokens"] == _input_tokens(fake_gateway, first) + _input_tokens(
        fake_gateway, second
    )
    assert second["stream"] is True
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me run that now."},
                {"type": "tool_use", "id": "toolu_s1", "name": "run_command", "input": tool_input},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_s1",
                    "content": "exit code: 0\nstreamed output\n",
                    "is_error": False,
                }
            ],
        },
    ]


def test_the_stream_tool_event_output_is_cut_to_2000_characters(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic, workspace: Path
) -> None:
    (workspace / "big.txt").write_text("y" * 5000)
    fake_gateway.enqueue(ToolUse("read_file", {"path": "big.txt"}))

    events = _stream(runtime_http, {"prompt": "read the big one"})

    [tool] = [data for event, data in events if event == "tool"]
    assert tool["output"] == "y" * 2000 + "…"
    assert _result(fake_gateway)["content"] == "y" * 5000  # Claude itself gets all of it
    assert events[-1][0] == "done"


def test_an_endless_tool_loop_stops_after_the_round_limit(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    fake_gateway.enqueue(
        *(ToolUse("run_command", {"command": f"echo {n}"}) for n in range(MAX_ROUNDS + 3))
    )

    body = _chat(runtime_http, "loop forever", session_id=session)

    assert len(_chat_requests(fake_gateway)) == MAX_ROUNDS + 1
    assert body["content"].startswith(f"[Stopped: Claude asked for more tools after {MAX_ROUNDS}")
    fake_gateway.reset()

    after = _chat(runtime_http, "are you done?", session_id=session)

    assert after["content"] == "Echo: are you done?"
    history = _chat_requests(fake_gateway)[-1]["messages"]
    assert [m["role"] for m in history] == ["user"] + ["assistant", "user"] * (MAX_ROUNDS + 1)
    blocks = [b for m in history if isinstance(m["content"], list) for b in m["content"]]
    uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
    results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
    assert uses == results
    assert len(uses) == MAX_ROUNDS
    assert history[-2]["content"] == [{"type": "text", "text": body["content"]}]


def test_a_failure_after_a_tool_ran_forgets_the_whole_turn(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    fake_gateway.enqueue(ToolUse("run_command", {"command": "echo half-way"}), Error(529))

    failed = runtime_http.post(CHAT, json={"prompt": "doomed", "session_id": session})

    assert failed.status_code == 529
    _chat(runtime_http, "fresh start", session_id=session)
    assert _chat_requests(fake_gateway)[-1]["messages"] == [
        {"role": "user", "content": "fresh start"}
    ]


def test_a_streamed_failure_after_a_tool_ran_forgets_the_whole_turn(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    session = _session()
    fake_gateway.enqueue(ToolUse("run_command", {"command": "echo half-way"}), Error(429))

    events = _stream(runtime_http, {"prompt": "doomed", "session_id": session})

    assert [event for event, _ in events] == ["tool", "error"]
    assert events[-1][1]["code"] == "rate_limit_error"
    _chat(runtime_http, "fresh start", session_id=session)
    assert _chat_requests(fake_gateway)[-1]["messages"] == [
        {"role": "user", "content": "fresh start"}
    ]


def test_tool_calls_are_counted_by_tool_and_outcome(
    runtime_http: httpx.Client, fake_gateway: FakeAnthropic
) -> None:
    before = _metrics(runtime_http)
    fake_gateway.enqueue(
        ToolUse("run_command", {"command": "true"}),
        ToolUse("run_command", {"command": "false"}),
        ToolUse("no_such_tool", {}),
    )

    _chat(runtime_http)
    after = _metrics(runtime_http)

    def moved(**labels: str) -> float:
        name = "agent_tool_calls_total"
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved(tool="run_command", status="ok") == 1
    assert moved(tool="run_command", status="error") == 1
    assert moved(tool="unknown", status="error") == 1


@pytest.mark.parametrize(
    ("setting", "offered"),
    [("none", None), ("read_file, run_command", ["read_file", "run_command"])],
)
def test_agent_tools_chooses_the_tools_offered(
    gateway: FakeAnthropic, tmp_path: Path, setting: str, offered: list[str] | None
) -> None:
    gateway.reset()
    limited = _spawn(tmp_path / "log", gateway.base_url, AGENT_TOOLS=setting)
    try:
        with limited.client() as http:
            body = _chat(http, "just talk")
    finally:
        _terminate(limited)

    [sent] = _chat_requests(gateway)
    if offered is None:
        assert "tools" not in sent
        assert body["usage"]["input_tokens"] == count_tokens(f"{SYSTEM}\njust talk")
    else:
        assert sent["tools"] == [TOOL_DEFINITIONS[name] for name in offered]


def test_a_malformed_tools_setting_stops_the_runtime_from_starting(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "agents.runtime"],
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),
            "AGENT_GATEWAY_URL": "http://127.0.0.1:9",
            "AGENT_PORT": "0",
            "AGENT_TOOLS": "run_command,format_disk",
        },
        capture_output=True,
        timeout=30,
    )

    assert finished.returncode != 0
    assert b"AGENT_TOOLS must be all, none or a comma list" in finished.stderr
