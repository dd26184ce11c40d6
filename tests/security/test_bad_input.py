"""A hostile corpus against every route: no answer is a 5xx.

Every operation of the OpenAPI schema (which also documents the Hypercore routes, the per-agent
chat and metrics, and the gateway) gets deep nesting, bodies over the size limit, invalid UTF-8,
NUL bytes, duplicate keys, wrong content types, numbers out of range and wrong types, in its
body, its query and its path ids, as a user with a write key and as an operator, while real
objects are in place: a running agent (booted for real, answering through the gateway and the
fake Anthropic), its session, a key, a budget, a scaling rule and its decision. The chat
socket's frames get the same. ``tests/test_bad_input.py`` holds the narrower cases.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client

from agents import services
from agents.models import Agent
from config.asgi import application
from console.models import ApiKey, Budget, Quota
from console.services import api_key_create
from operator_agent.models import OperatorAction, OperatorRun
from operator_agent.services import operator_agent_create
from scaling.models import ScalingDecision, ScalingRule
from wire.jsonbound import MAX_DEPTH

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 64 * 1024  # MAX_REQUEST_BYTES for this test: "over the limit" stays cheap to send


def _nest(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def _nest_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# Whole bodies, sent as they are.
RAW_BODIES: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b"{",
    b"\x00",
    b'{"a": "\x00"}',  # a raw control character: not JSON
    b"\xff\xfe\xfd",
    b'{"name": "\xff\xfe"}',
    b"\xef\xbb\xbf{}",  # a byte-order mark
    _nest(1000).encode(),
    _nest_objects(1000).encode(),
    _nest(MAX_DEPTH + 1).encode(),
    _nest(100_000).encode(),
    b"NaN",
    b"1e400",
    b'{"n": Infinity}',
    b'{"a": 1, "a": {"b": 2}, "a": [3]}',
    b'{"a": ' + str(2**64).encode() + b"}",
    b'"' + b"x" * (LIMIT + 1) + b'"',  # over the size limit
]

# Values each field of a body gets in turn, written as JSON text.
VALUES: list[str] = [
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-1",
    "0",
    str(2**64),
    str(-(2**63) - 1),
    "1e-400",
    "1.5",
    "true",
    "null",
    '""',
    '"\\u0000"',
    '"not-a-uuid\\u0000"',
    '"' + "9" * 400 + '"',
    "[]",
    "{}",
    '[{"a": null}]',
    _nest(MAX_DEPTH + 5),
    '"' + "x" * 20_000 + '"',
    '"\\ud800"',  # a lone surrogate
]

# What each field gets alone (the others absent), for the operator, who reaches every route.
EACH = ["1e400", "-1", str(2**64), "NaN", "null", "[]", "{}", '"\\u0000"', '"\\ud800"']
QUERY_VALUES = ["", "%00", "%FF%FE", "-1", "1e400", "NaN", str(2**64), "x" * 2000, "[]", "true"]
PATH_IDS = ["not-a-uuid", "9" * 400, "-1", "1e400", str(2**64), "%00", "%FF", str(uuid.uuid4())]
CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]


@pytest.fixture
def world(user, operator, api_key, live_console, settings):
    """Real objects of alice's (a running agent, its session, a key, a budget) and an
    operator's scaling rule with a decision; API keys for both."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT
    settings.CHAT_WS_MESSAGES_PER_MINUTE = 100_000
    agent = services.agent_spawn(owner=user, name="target", memory_mib=256)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    # No more agents for anyone: a body that happens to be valid is refused, not booted.
    for someone in (user, operator):
        Quota.objects.update_or_create(
            user=someone,
            defaults={"max_agents": 1, "requests_per_minute": None, "tokens_per_minute": None},
        )
    session = services.session_create(user=user, agent_id=agent.pk, title="target")
    spare_key, _ = api_key_create(user=user, name="spare")
    budget = Budget.objects.create(user=user, metric="usd", window="month", limit=Decimal(50))
    rule = ScalingRule.objects.create(name="pool", model="claude-sonnet-5-5", min_agents=0)
    decision = ScalingDecision.objects.create(
        rule=rule, current_agents=0, desired_agents=0, action="hold", reason="quiet"
    )
    watcher = operator_agent_create(
        values={
            "name": "watcher",
            "instructions": "Keep the fleet healthy.",
            "model": "claude-sonnet-5-5",
            "every_minutes": 30,
            "enabled": False,
            "daily_usd_cap": Decimal(1),
            "tool_calls_per_minute": 10,
            "spawn_approval_over": 1,
            "cost_approval_over_usd_per_hour": Decimal(1),
            "allowed_tools": ["agent_stop"],
        },
        admin=False,
        actor=operator,
    )
    # A finished run's decided call: a pending one here would be approved by a valid body and
    # its run (which has no conversation, being made by hand) carried on inline.
    run = OperatorRun.objects.create(agent=watcher, trigger="schedule", status="completed")
    action = OperatorAction.objects.create(
        run=run, tool_use_id="toolu_1", tool="agent_stop", status="denied"
    )
    ids = {
        "actions": str(action.pk),
        "agents": str(agent.pk),
        "agent_id": str(agent.pk),
        "sessions": str(session.pk),
        "session_id": str(session.pk),
        "keys": str(spare_key.pk),
        "budgets": str(budget.pk),
        "quotas": str(user.pk),
        "rules": str(rule.pk),
        "decisions": str(decision.pk),
    }
    return {
        "base": live_console,
        "ids": ids,
        "callers": {
            "writer": api_key(user),
            "operator": api_key_create(user=operator, scopes=["read", "write", "admin"])[1],
        },
        "agent": agent,
        "session": session,
        "user": user,
    }


def _real_id(path: str, name: str, ids: dict[str, str]) -> str:
    if name in ids:
        return ids[name]
    collection = path.split("/{")[0].rsplit("/", 1)[-1]
    return ids[collection]


def _operations(base: str) -> list[tuple[str, str, dict[str, Any]]]:
    schema = httpx.get(f"{base}/api/schema/?format=json", timeout=30).json()
    found = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                found.append((method.upper(), path, operation))
    # Whatever stops, deletes or revokes goes last, so that the rest meet live objects.
    last = ("/stop", "/start", "/restart", "/close", "/cancel", "/revoke", "/reset")
    return sorted(found, key=lambda op: op[0] == "DELETE" or op[1].endswith(last))


def _fields(operation: dict[str, Any], components: dict[str, Any]) -> list[str]:
    content = operation.get("requestBody", {}).get("content", {})
    schema = next(iter(content.values()), {}).get("schema", {})
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return sorted(schema.get("properties", {}))


def _bodies(fields: list[str], *, thorough: bool) -> list[tuple[bytes, str | None]]:
    """The corpus for a body with ``fields``: every field in turn with every value when
    ``thorough``, else all fields at once with each value."""
    bodies: list[tuple[bytes, str | None]] = [(raw, "application/json") for raw in RAW_BODIES]
    bodies += [(b'{"a": 1}', kind) for kind in CONTENT_TYPES]
    for value in VALUES:
        body = ", ".join(f"{json.dumps(name)}: {value}" for name in fields)
        bodies.append((f"{{{body}}}".encode(), "application/json"))
    if thorough:
        for name in fields:
            key = json.dumps(name)
            bodies += [(f"{{{key}: {value}}}".encode(), "application/json") for value in EACH]
            bodies.append((f'{{{key}: "a", {key}: 1, {key}: null}}'.encode(), "application/json"))
    return bodies


def _assert_clean(response: httpx.Response, where: str, problems: list[str]) -> None:
    if response.status_code >= 500:
        problems.append(f"{where}: {response.status_code} {response.text[:300]}")
        return
    kind = response.headers.get("content-type", "")
    if response.status_code >= 400 and kind.startswith("application/json"):
        error = response.json().get("error", {})
        # The console's shape; the gateway adds Anthropic's "type" to it.
        if not {"code", "message", "details"} <= set(error):
            problems.append(f"{where}: not the error shape: {response.text[:300]}")


def _headers(caller_key: str, path: str) -> dict[str, str]:
    if path.startswith("/gateway/"):
        return {"x-api-key": caller_key}
    return {"Authorization": f"Bearer {caller_key}"}


@pytest.mark.timeout(600)  # a guard against a hang, not a bound on speed
def test_no_route_answers_hostile_input_with_a_server_error(world):
    base, ids = world["base"], world["ids"]
    schema = httpx.get(f"{base}/api/schema/?format=json", timeout=30).json()
    components = schema["components"]["schemas"]
    problems: list[str] = []
    sent = 0
    started = time.monotonic()
    # The operator reaches every route's deepest code (operator routes refuse the writer early).
    for caller, key in world["callers"].items():
        with httpx.Client(base_url=base, timeout=30) as http:
            for method, path, operation in _operations(base):
                headers = _headers(key, path)
                params = [p for p in operation.get("parameters", []) if p["in"] == "path"]
                real = path
                for param in params:
                    real = real.replace(f"{{{param['name']}}}", _real_id(path, param["name"], ids))
                where = f"{caller} {method} {path}"
                fields = _fields(operation, components)
                bodies = _bodies(fields, thorough=caller == "operator")
                for body, content_type in bodies if method not in ("GET", "DELETE") else []:
                    request_headers = dict(headers)
                    if content_type:
                        request_headers["content-type"] = content_type
                    response = http.request(method, real, content=body, headers=request_headers)
                    _assert_clean(response, f"{where} {body[:60]!r} ({content_type})", problems)
                    sent += 1
                for param in operation.get("parameters", []):
                    if param["in"] != "query":
                        continue
                    for value in QUERY_VALUES:
                        response = http.request(
                            method, f"{real}?{param['name']}={value}", headers=headers
                        )
                        _assert_clean(response, f"{where} ?{param['name']}={value[:40]}", problems)
                        sent += 1
                for param in params:
                    for bad in PATH_IDS:
                        wrong = real.replace(_real_id(path, param["name"], ids), bad, 1)
                        response = http.request(method, wrong, headers=headers, json={})
                        _assert_clean(response, f"{where} {param['name']}={bad[:40]}", problems)
                        sent += 1
    elapsed = time.monotonic() - started
    assert not problems, f"{len(problems)} of {sent} requests failed:\n" + "\n".join(problems[:40])
    print(f"{sent} hostile requests in {elapsed:.0f} s")


# --- The chat socket's frames --------------------------------------------------------------------

FRAME_FIELDS = ["type", "session_id", "after", "max_tokens", "content", "message_id"]
FRAME_TYPES = ["open", "resume", "send", "stop", "regenerate", "edit"]


def _frames(session_id: str) -> list[str]:
    frames = [
        " ",
        "{",
        "null",
        "[]",
        '"open"',
        "\x00",
        _nest(1000),
        _nest_objects(1000),
        '{"type": ' + _nest(MAX_DEPTH + 1, '"open"') + "}",
        '{"type": "open", "session_id": NaN}',
        '{"type": "nope"}',
        '{"type": "' + "x" * 5000 + '"}',
        '{"type": "open", "type": 1}',
        '{"type": "send", "session_id": "' + session_id + '", "content": "' + "x" * 300_000 + '"}',
    ]
    for kind in FRAME_TYPES:
        for name in FRAME_FIELDS[1:]:
            for value in VALUES:
                if value in ('""', "null") and name in ("after", "max_tokens", "message_id"):
                    continue  # optional ones: the frame might be a valid turn
                base = {"type": kind, "session_id": session_id, "content": "hi", "message_id": 1}
                fields = ", ".join(
                    f"{json.dumps(k)}: {json.dumps(v)}" for k, v in base.items() if k != name
                )
                frames.append(f'{{{fields}, "{name}": {value}}}')
    return frames


_MARK = '{"type": "mark"}'  # answered at once, in order: an unknown_type error


async def _answers(socket: WebsocketCommunicator) -> list[dict[str, Any]]:
    """Every event the socket sends up to the answer to ``_MARK``, sent after a frame (a frame
    may have no answer: a resume with nothing to replay)."""
    await socket.send_to(text_data=_MARK)
    found = []
    while True:
        event = await socket.receive_json_from(timeout=30)
        if event["type"] == "error" and "'mark'" in event["error"]["message"]:
            return found
        found.append(event)


def test_no_chat_frame_fails_the_socket(world):
    client = Client()
    client.force_login(world["user"])
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    session_id = str(world["session"].pk)

    async def scenario() -> list[str]:
        socket = WebsocketCommunicator(
            application,
            "/ws/chat/",
            headers=[
                (b"host", b"127.0.0.1:8000"),
                (b"origin", b"http://127.0.0.1:8000"),
                (b"cookie", cookie),
            ],
        )
        connected, _ = await socket.connect(timeout=5)
        assert connected
        assert (await socket.receive_json_from(timeout=5))["type"] == "ready"
        problems = []
        for frame in _frames(session_id):
            await socket.send_to(text_data=frame)
            for event in await _answers(socket):
                failed = event["type"] == "error" and (
                    event["error"]["code"] == "internal_error" or event.get("status", 400) >= 500
                )
                if failed:
                    problems.append(f"{frame[:80]!r}: {event}")
        await socket.send_to(bytes_data=b"\xff\x00")
        answer = await socket.receive_json_from(timeout=5)
        while "seq" in answer:  # the turns valid frames started, which wait for each other
            answer = await socket.receive_json_from(timeout=30)
        assert answer["error"]["code"] == "malformed_frame"
        await socket.disconnect()
        return problems

    problems = async_to_sync(scenario)()
    assert not problems, "\n".join(problems[:20])


def test_depth_is_refused_with_a_clear_400_everywhere(world):
    """Past MAX_DEPTH: 400 and the error shape, naming the limit; the gateway in its own
    shape (Anthropic's)."""
    deep = _nest(1000).encode()
    key = world["callers"]["writer"]
    with httpx.Client(base_url=world["base"], timeout=30) as http:
        for path in (
            "/api/v1/agents",
            "/v1/agents/spawn",
            "/api/v1/keys",
            f"/api/v1/sessions/{world['session'].pk}/messages",
            f"/agents/{world['agent'].pk}/v1/agent/chat",
            "/api/v1/execute",
        ):
            response = http.post(
                path,
                content=deep,
                headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
            )
            assert response.status_code == 400, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "malformed_body", path
            assert str(MAX_DEPTH) in error["message"]
            assert error["details"] == {"max_depth": MAX_DEPTH}
    assert ApiKey.objects.filter(user=world["user"]).count() == 2  # nothing was created


def test_the_gateway_refuses_depth_in_its_own_shape(world):
    for deep in (_nest(1000), _nest_objects(1000), '{"messages": ' + _nest(MAX_DEPTH) + "}"):
        response = httpx.post(
            f"{world['base']}/gateway/v1/messages",
            content=deep.encode(),
            headers={"x-api-key": world["callers"]["writer"], "content-type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 400, response.text
        assert response.json()["type"] == "error"


# --- A hostile sandbox ---------------------------------------------------------------------------


@pytest.fixture
def hostile_runtime() -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    """An "agent runtime" on loopback that answers each chat with the next scripted
    (status, body)."""
    import http.server
    import threading

    answers: list[tuple[int, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            status, body = answers.pop(0)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()


def test_a_runtime_that_answers_garbage_is_a_502_not_a_500(user, client_for, hostile_runtime):
    """A sandbox runs the agent's code, so its runtime's answers are input too."""
    endpoint, answers = hostile_runtime
    agent = Agent.objects.create(
        owner=user, model="m", sandbox_id="s", status="running", endpoint=endpoint
    )
    replies = [
        (200, _nest(1000).encode()),
        (200, b"[]"),
        (200, b'{"content": {"a": 1}}'),
        (200, b"not json"),
        (500, _nest_objects(1000).encode()),
        (500, b'{"error": [1, 2]}'),
        (400, b'{"error": {"code": {"a": 1}, "message": ["x"], "details": "y"}}'),
    ]
    answers.extend(replies)
    client = client_for(user)
    for status, body in replies:
        response = client.post(f"/agents/{agent.pk}/v1/agent/chat", {"prompt": "hi"}, format="json")
        assert response.status_code in (400, 502), (status, body[:40], response.content[:200])
        assert set(response.json()["error"]) == {"code", "message", "details"}


def test_a_runtime_that_streams_garbage_ends_the_turn_with_a_502(user, client_for, hostile_runtime):
    endpoint, answers = hostile_runtime
    agent = Agent.objects.create(
        owner=user, model="m", sandbox_id="s", status="running", endpoint=endpoint
    )
    session = services.session_create(user=user, agent_id=agent.pk, title="")
    streams = [
        b"event: delta\ndata: " + _nest(1000).encode() + b"\n\n",
        b"event: delta\ndata: [1]\n\n",
        b'event: delta\ndata: {"text": 1}\n\n',
        b'event: done\ndata: {"content": null}\n\n',
        b'event: error\ndata: {"code": {"a": 1}}\n\n',
        b"event: delta\ndata: \xff\xfe\n\n",
        b"event: delta\ndata: {\n\n",
    ]
    answers.extend((200, body) for body in streams)
    client = client_for(user)
    for body in streams:
        response = client.post(
            f"/api/v1/sessions/{session.pk}/messages", {"content": "hi"}, format="json"
        )
        assert response.status_code == 502, (body[:40], response.content[:200])
        assert response.json()["error"]["code"] == "agent_unavailable"


def test_an_idempotency_key_does_not_change_a_refusal(world):
    """With an Idempotency-Key, bad bodies are refused the same way, and the key stays free."""
    key = world["callers"]["writer"]
    routes = [
        "/api/v1/agents",
        "/v1/agents/spawn",
        "/api/v1/execute",
        f"/api/v1/sessions/{world['session'].pk}/messages",
        f"/agents/{world['agent'].pk}/v1/agent/chat",
    ]
    with httpx.Client(base_url=world["base"], timeout=30) as http:
        for path in routes:
            for body, status in ((_nest(1000).encode(), 400), (b'"' + b"x" * LIMIT + b'"', 413)):
                headers = {
                    "Authorization": f"Bearer {key}",
                    "content-type": "application/json",
                    "Idempotency-Key": f"bad-{path}",
                }
                for _ in range(2):  # the same answer again: nothing was kept for the key
                    response = http.post(path, content=body, headers=headers)
                    assert response.status_code == status, (path, response.text[:200])
                    assert "Idempotent-Replayed" not in response.headers
