"""/api/asyncapi/ is a valid AsyncAPI 3.0.0 document, and real frames match it.

The document is validated against the official JSON Schema of AsyncAPI 3.0.0 (vendored under
tests/agents/asyncapi/). Then a WebSocket turn (an error, a snapshot, a turn, a resume, a turn
ended by a refusal) and an SSE turn run for real, and every frame received is validated against
the payload of the message the document names for it.
"""

from __future__ import annotations

import copy
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from agents import services
from agents.models import Agent
from config.asgi import application
from console.models import Budget
from tests.fakes.anthropic import Error, ToolUse

ASYNCAPI_SCHEMA = json.loads(
    (Path(__file__).parent / "asyncapi" / "asyncapi-3.0.0.schema.json").read_text()
)
TERMINAL = {"done", "cancelled", "error"}


def _document(client: Client | None = None) -> dict[str, Any]:
    response = (client or Client()).get("/api/asyncapi/", HTTP_HOST="127.0.0.1:8123")
    assert response.status_code == 200, response.content
    return response.json()


def _problems(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(ASYNCAPI_SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def _check(document: dict[str, Any], operation: str, name: str, payload: Any) -> None:
    """``payload`` is valid against the message ``name`` of ``operation`` in the document."""
    refs = [m["$ref"] for m in document["operations"][operation]["messages"]]
    channel = document["operations"][operation]["channel"]["$ref"].split("/")[-1]
    found = []
    for ref in refs:
        key = document["channels"][channel]["messages"][ref.split("/")[-1]]["$ref"]
        message = document["components"]["messages"][key.split("/")[-1]]
        if message["name"] == name:
            found.append(message)
    assert len(found) == 1, (operation, name)
    schema = {**found[0]["payload"], "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(payload)


# --- The document --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_document_is_valid_asyncapi_3_and_served_as_json_and_yaml():
    document = _document()
    assert document["asyncapi"] == "3.0.0"
    assert _problems(document) == []
    assert document["servers"]["websocket"] == document["servers"]["websocket"] | {
        "host": "127.0.0.1:8123",
        "protocol": "ws",
    }
    assert document["servers"]["http"]["protocol"] == "http"
    # The validator is not a rubber stamp: an operation with no action is refused.
    broken = copy.deepcopy(document)
    del broken["operations"]["sendServerEvents"]["action"]
    assert _problems(broken)
    as_yaml = Client().get("/api/asyncapi/?format=yaml", HTTP_HOST="127.0.0.1:8123")
    assert as_yaml["Content-Type"] == "application/yaml"
    assert yaml.safe_load(as_yaml.content) == document
    refused = Client().post("/api/asyncapi/")
    assert (refused.status_code, refused.json()["error"]["code"]) == (405, "method_not_allowed")


@pytest.mark.django_db
def test_the_payloads_are_the_wire_typeddicts():
    document = _document()
    schemas = document["components"]["schemas"]
    send = schemas["SendRequest"]
    assert send["required"] == ["type", "session_id", "content"]  # max_tokens is NotRequired
    assert send["properties"]["type"] == {"type": "string", "const": "send"}
    assert send["description"] == "A new prompt at the end of the session."
    assert schemas["SessionEvent"]["properties"]["running"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}]
    }
    assert schemas["DoneEvent"]["properties"]["messages"]["items"] == {
        "$ref": "#/components/schemas/MessageData"
    }
    assert "budget_exceeded" in schemas["ErrorBody"]["properties"]["code"]["description"]
    assert "resume" in document["operations"]["sendServerEvents"]["description"]
    delta = {"type": "delta", "seq": 1, "session_id": "s", "turn_id": "t", "text": "Hi"}
    _check(document, "sendServerEvents", "delta", delta)
    with pytest.raises(jsonschema.ValidationError):  # a field the protocol does not have
        _check(document, "sendServerEvents", "delta", delta | {"x": 1})


# --- Real frames ---------------------------------------------------------------------------------


@pytest.fixture
def agent(user, live_console) -> Agent:
    agent = services.agent_spawn(owner=user, name="documented", memory_mib=256)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.RUNNING, agent.last_error
    return agent


@pytest.mark.django_db(transaction=True)
def test_websocket_frames_match_the_document(user, agent, fake_anthropic):
    document = _document()
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    sid = str(services.session_create(user=user, agent_id=agent.pk, title="").pk)
    headers = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")]

    def socket() -> WebsocketCommunicator:
        return WebsocketCommunicator(application, "/ws/chat/", [*headers, (b"cookie", cookie)])

    sent: list[dict[str, Any]] = []

    async def until(ws: WebsocketCommunicator, types: set[str]) -> list[dict[str, Any]]:
        found, deadline = [], time.monotonic() + 20
        while not found or found[-1]["type"] not in types:
            timeout = max(0.1, deadline - time.monotonic())
            found.append(await ws.receive_json_from(timeout=timeout))
        return found

    async def send(ws: WebsocketCommunicator, frame: dict[str, Any]) -> None:
        sent.append(frame)
        await ws.send_json_to(frame)

    async def scenario() -> list[dict[str, Any]]:
        first = socket()
        assert (await first.connect(timeout=5))[0]
        got = await until(first, {"ready"})
        await first.send_json_to({"type": "open", "session_id": "nope"})  # refused
        got += await until(first, {"error", "session"})
        await send(first, {"type": "open", "session_id": sid})
        got += await until(first, {"session"})
        await send(first, {"type": "send", "session_id": sid, "content": "Hi", "max_tokens": 64})
        got += await until(first, TERMINAL)
        await first.disconnect()
        second = socket()  # a page back after a reconnect
        assert (await second.connect(timeout=5))[0]
        got += await until(second, {"ready"})
        await send(second, {"type": "resume", "session_id": sid, "after": 1})
        got += await until(second, TERMINAL)
        await sync_to_async(Budget.objects.create)(
            user=user, metric="usd", window="month", limit=Decimal("0")
        )
        await send(second, {"type": "regenerate", "session_id": sid})
        got += await until(second, TERMINAL)
        await send(second, {"type": "stop", "session_id": sid})
        await send(second, {"type": "edit", "session_id": sid, "message_id": 1, "content": "x"})
        await second.disconnect()
        return got

    fake_anthropic.enqueue(ToolUse("Bash", {"command": "echo hi"}))  # then the echo
    received = async_to_sync(scenario)()
    for frame in sent:
        _check(document, "receiveClientFrames", frame["type"], frame)
    for event in received:
        _check(document, "sendServerEvents", event["type"], event)
    kinds = [e["type"] for e in received]
    assert {"ready", "session", "turn_started", "delta", "tool", "done", "error"} <= set(kinds)
    assert kinds.count("done") == 2  # the turn, then its events again after the resume
    assert received[1]["type"] == "error" and "seq" not in received[1], received[1]
    assert received[-1]["error"]["code"] == "budget_exceeded" and "seq" in received[-1]


@pytest.mark.django_db(transaction=True)
def test_sse_frames_match_the_document(user, agent, api_key, live_console, fake_anthropic):
    document = _document()
    sid = str(services.session_create(user=user, agent_id=agent.pk, title="").pk)
    url = f"{live_console}/api/v1/sessions/{sid}/messages"
    headers = {"Authorization": f"Bearer {api_key(user)}"}

    def turn(content: str, key: str) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        body, sent = {"content": content, "stream": True}, headers | {"Idempotency-Key": key}
        with httpx.stream("POST", url, json=body, headers=sent, timeout=30) as response:
            assert response.status_code == 200
            name = ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((name, json.loads(line[5:])))
        return events

    # A tool runs, then Anthropic refuses the call after it: the turn ends with an error.
    fake_anthropic.enqueue(ToolUse("Bash", {"command": "echo hi"}, text="Let me look."), Error(400))
    broken = turn("Break off", "k-1")
    whole = turn("Stream me", "k-2")
    again = turn("Stream me", "k-2")  # as after a reconnect: the same turn, from its start
    assert [n for n, _ in broken] == ["delta"] * 3 + ["tool", "error"], broken
    assert [n for n, _ in whole][-1] == "done" and len(whole) > 2
    assert again == whole
    for name, data in broken + whole:
        _check(document, "sendTurnStream", name, data)
