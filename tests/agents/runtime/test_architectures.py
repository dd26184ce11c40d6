"""The runtime's architectures: the built-in loop by default, the Claude Agent SDK when asked
(its CLI against the fake Anthropic standing in for the gateway), and a refusal at start for an
architecture the runtime cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agents.runtime.architectures import ARCHITECTURES, CLAUDE_AGENT_SDK, architecture_problem
from agents.runtime.config import ConfigError, RuntimeConfig
from agents.runtime.server import ARCHITECTURE_KEY, build_app
from agents.runtime.tools import ToolConfig
from tests.agents.runtime.test_server import CHAT, REPO_ROOT, TOKEN, _spawn, _sse, _terminate
from tests.fakes.anthropic import Error, FakeAnthropic, Text, ToolUse

needs_sdk = pytest.mark.skipif(
    architecture_problem(CLAUDE_AGENT_SDK) is not None,
    reason=f"{architecture_problem(CLAUDE_AGENT_SDK)}",
)
# The SDK made to look absent, as on a host (or microVM guest) without it.
_WITHOUT_SDK = (
    "import sys\n"
    "class NoSdk:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'claude_agent_sdk':\n"
    "            raise ModuleNotFoundError(name)\n"
    "sys.meta_path.insert(0, NoSdk())\n"
)
# Asks the runtime's gateway proxy, from inside a turn, what the CLI's own key and another may do.
_PROBE = """python3 - <<'EOF'
import os, urllib.request, urllib.error
base, key = os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_API_KEY"]
for path, k in (("/v1/models", key), ("/v1/messages", "stolen")):
    request = urllib.request.Request(base + path, data=b"{}", headers={"x-api-key": k})
    try:
        urllib.request.urlopen(request)
    except urllib.error.HTTPError as exc:
        print(path, exc.code)
print("key", key[:5], "token" if "agt_" in str(os.environ) else "no token")
EOF"""


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(required_api_key=TOKEN) as fake:
        yield fake


@pytest.fixture
def sdk_runtime(
    gateway: FakeAnthropic, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[httpx.Client]:
    gateway.reset()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    started = _spawn(
        tmp_path / "log",
        gateway.base_url,
        AGENT_ARCHITECTURE=CLAUDE_AGENT_SDK,
        AGENT_WORKSPACE=str(workspace),
        HOME=str(workspace),
        **getattr(request, "param", {}),
    )
    try:
        with httpx.Client(base_url=started.url, timeout=90) as http:
            yield http
    finally:
        _terminate(started)


def test_the_built_in_loop_is_the_default_and_each_architecture_is_known(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENT_GATEWAY_URL", "http://gateway.invalid")
    monkeypatch.delenv("AGENT_ARCHITECTURE", raising=False)
    tools = ToolConfig.from_env()

    app = build_app(RuntimeConfig.from_env(), tools)

    assert app[ARCHITECTURE_KEY].name == "builtin"
    assert ARCHITECTURES == ("builtin", CLAUDE_AGENT_SDK)
    monkeypatch.setenv("AGENT_ARCHITECTURE", "langchain")
    with pytest.raises(ConfigError, match="unknown architecture 'langchain'"):
        RuntimeConfig.from_env()


def test_a_runtime_without_the_sdk_refuses_to_start_as_one_and_never_loads_it():
    check = _WITHOUT_SDK + (
        "import os\n"
        "os.environ['AGENT_GATEWAY_URL'] = 'http://gateway.invalid'\n"
        "from agents.runtime.config import ConfigError, RuntimeConfig\n"
        "import agents.runtime.server\n"
        "RuntimeConfig.from_env()\n"
        "os.environ['AGENT_ARCHITECTURE'] = 'claude_agent_sdk'\n"
        "try:\n"
        "    RuntimeConfig.from_env()\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
        "assert 'claude_agent_sdk' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO_ROOT
    )

    assert done.returncode == 0, done.stderr
    assert "the Claude Agent SDK is not installed on this host" in done.stdout


@needs_sdk
@pytest.mark.timeout(180)
def test_an_sdk_turn_streams_the_built_in_loops_events(sdk_runtime, gateway):
    gateway.enqueue(
        ToolUse("Bash", {"command": "echo from-the-sdk > out.txt && cat out.txt"}, text="On it."),
        Text("Done: out.txt holds from-the-sdk."),
    )
    session = "3f0b8a52-8d4e-4a8b-9b61-0d3c1c7f6a10"

    with sdk_runtime.stream(
        "POST", CHAT, json={"prompt": "Write it.", "stream": True, "session_id": session}
    ) as response:
        events = _sse(response)

    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and "tool" in kinds and kinds.count("delta") >= 2
    (tool,) = [data for kind, data in events if kind == "tool"]
    assert tool["name"] == "Bash" and tool["input"]["command"].startswith("echo from-the-sdk")
    assert "from-the-sdk" in tool["output"] and tool["is_error"] is False
    done = events[-1][1]
    assert done["content"] == "Done: out.txt holds from-the-sdk."
    assert done["session_id"] == session and done["status"] == "completed"
    usage = done["usage"]
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # The deltas after the tool are the answer.
    after = kinds.index("tool")
    assert "".join(d["text"] for k, d in events[after:] if k == "delta") == done["content"]
    # Both calls reached the gateway with the agent's token and the console's session.
    calls = [r for r in gateway.requests if r.path == "/v1/messages"]
    assert len(calls) == 2
    assert all(r.api_key == TOKEN and r.headers["x-console-session"] == session for r in calls)
    assert all(r.headers["user-agent"].startswith("claude-cli/") for r in calls)


@needs_sdk
@pytest.mark.timeout(180)
def test_the_cli_holds_a_turns_key_for_messages_only_never_the_token(sdk_runtime, gateway):
    gateway.enqueue(ToolUse("Bash", {"command": _PROBE}), Text("Probed."))

    reply = sdk_runtime.post(CHAT, json={"prompt": "Probe."})

    assert reply.status_code == 200, reply.text
    output = json.dumps(gateway.requests[-1].body["messages"][-1])
    assert "/v1/models 404" in output and "/v1/messages 401" in output
    assert "key turn-" in output and "no token" in output
    assert TOKEN not in output


@needs_sdk
@pytest.mark.timeout(180)
def test_a_later_turn_goes_on_from_the_earlier_and_an_edit_forks_it(sdk_runtime, gateway):
    session = "7c1e0f0e-0c9a-4bfa-9a3d-5b8f4a3e2d11"
    for prompt, answer in (("First?", "One."), ("Second?", "Two.")):
        gateway.enqueue(Text(answer))
        reply = sdk_runtime.post(CHAT, json={"prompt": prompt, "session_id": session})
        assert reply.status_code == 200 and reply.json()["content"] == answer, reply.text
    seen = json.dumps(gateway.requests[-1].body["messages"])
    assert "First?" in seen and "One." in seen and "Second?" in seen

    # Replacing the second turn goes on from the first only.
    gateway.enqueue(Text("Two, again."))
    edited = sdk_runtime.post(
        CHAT, json={"prompt": "Second, edited?", "session_id": session, "keep_turns": 1}
    )

    assert edited.status_code == 200 and edited.json()["content"] == "Two, again."
    seen = json.dumps(gateway.requests[-1].body["messages"])
    assert "First?" in seen and "One." in seen and "Second, edited?" in seen
    assert "Second?" not in seen and "Two." not in seen


@needs_sdk
@pytest.mark.timeout(180)
def test_a_gateway_refusal_fails_the_turn_with_its_status_and_it_is_forgotten(sdk_runtime, gateway):
    session = "0d4b6f5e-4c55-4a5e-8f0e-6a3c2b1d9e77"
    gateway.enqueue(Error(429, message="Scripted: your budget is spent"))

    refused = sdk_runtime.post(CHAT, json={"prompt": "Hello?", "session_id": session})

    assert refused.status_code == 429, refused.text
    assert "Scripted: your budget is spent" in refused.json()["error"]["message"]
    assert len([r for r in gateway.requests if r.path == "/v1/messages"]) == 1  # not retried
    gateway.enqueue(Text("Hello."))
    again = sdk_runtime.post(CHAT, json={"prompt": "Again?", "session_id": session})
    assert again.status_code == 200 and again.json()["content"] == "Hello."
    assert "Hello?" not in json.dumps(gateway.requests[-1].body["messages"])


@needs_sdk
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sdk_runtime", [{"AGENT_MAX_TOOL_ROUNDS": "1"}], indirect=True)
def test_a_turn_past_its_rounds_ends_with_a_note_as_the_built_in_loops(sdk_runtime, gateway):
    gateway.enqueue(
        ToolUse("Bash", {"command": "echo one"}, text="First."),
        ToolUse("Bash", {"command": "echo two"}, text="Second."),
        Text("Never asked for."),
    )

    reply = sdk_runtime.post(CHAT, json={"prompt": "Loop."})

    assert reply.status_code == 200, reply.text
    content = reply.json()["content"]
    assert content.startswith("Second.") and "AGENT_MAX_TOOL_ROUNDS" in content
    assert len([r for r in gateway.requests if r.path == "/v1/messages"]) == 2
