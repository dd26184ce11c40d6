"""The chat's stream protocol as an AsyncAPI 3.0.0 document, served at ``/api/asyncapi/``.

Made from what the code uses, not written a second time: the payloads are the TypedDicts of
``wire.events`` turned into JSON Schema (their docstrings are the messages' descriptions, the
module's docstring the order of events and the resume after a reconnect), the SSE ``done`` is
``wire.turns.CHAT_RESULT_SCHEMA`` (the OpenAPI schema's ``ChatResult`` too), and the error codes
are the ones the console counts (``plumbing.metrics.ERROR_CODES``). The document describes the
console: it receives the client's frames and sends the events.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin

import yaml
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from agents.consumers import CLOSE_ANONYMOUS, CLOSE_SUSPENDED
from plumbing.errors import methods_allowed
from plumbing.metrics import ERROR_CODES
from wire import events as ev
from wire.turns import CHAT_RESULT_SCHEMA

__all__ = ["asyncapi_document", "asyncapi_view", "payload_schema"]

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    type(None): {"type": "null"},
}
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}
_SCHEMAS = "#/components/schemas/"

# The WebSocket's frames, client to server, then server to client (wire/events.py).
CLIENT_FRAMES: tuple[type, ...] = typing.get_args(ev.ClientEvent)
SERVER_EVENTS: tuple[type, ...] = (
    ev.ReadyEvent,
    ev.SessionEvent,
    ev.TurnStartedEvent,
    ev.DeltaEvent,
    ev.ToolEvent,
    ev.DoneEvent,
    ev.CancelledEvent,
    ev.ErrorEvent,
)


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "")


def payload_schema(tp: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a type of the wire; a TypedDict goes to ``schemas`` under its name
    and is referred to."""
    origin = get_origin(tp)
    if origin in (Required, NotRequired, typing.Annotated):
        return payload_schema(get_args(tp)[0], schemas)
    if tp is Any:
        return {}
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    if origin is Literal:
        values = list(get_args(tp))
        kinds = {_JSON_TYPES[type(v)] for v in values}
        kind: Any = kinds.pop() if len(kinds) == 1 else sorted(kinds)
        if len(values) == 1:
            return {"type": kind, "const": values[0]}
        return {"type": kind, "enum": values}
    if origin in (Union, types.UnionType):
        return {"anyOf": [payload_schema(arg, schemas) for arg in get_args(tp)]}
    if origin is list:
        return {"type": "array", "items": payload_schema(get_args(tp)[0], schemas)}
    if origin is dict:
        values_schema = payload_schema(get_args(tp)[1], schemas)
        return {"type": "object", "additionalProperties": values_schema or True}
    if typing.is_typeddict(tp):
        name = tp.__name__
        if name not in schemas:
            schemas[name] = {}  # taken before its fields, for a type that refers to itself
            hints = typing.get_type_hints(tp, include_extras=True)
            required = [
                key
                for key, hint in hints.items()
                if get_origin(hint) is Required
                or (tp.__total__ and get_origin(hint) is not NotRequired)
            ]
            schemas[name] = {
                "type": "object",
                "title": name,
                "description": _doc(tp),
                "properties": {key: payload_schema(h, schemas) for key, h in hints.items()},
                "required": required,
                "additionalProperties": False,
            }
        return {"$ref": _SCHEMAS + name}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _event_type(tp: type) -> str:
    """The ``type`` a frame of this TypedDict carries."""
    (value,) = get_args(typing.get_type_hints(tp)["type"])
    return str(value)


def _message(name: str, title: str, description: str, payload: dict[str, Any]) -> dict[str, Any]:
    summary = description.split("\n\n")[0].replace("\n", " ")
    return {
        "name": name,
        "title": title,
        "summary": summary.split(". ")[0].rstrip(".") + ".",
        "description": description,
        "payload": payload,
    }


def _refs(channel: str, names: list[str]) -> list[dict[str, str]]:
    return [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in names]


def _sse_messages(schemas: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The SSE stream's events: the turn's events as the REST and Hypercore routes write them
    (``agents.views._sse_of``)."""

    def picked(tp: type, *keys: str) -> dict[str, Any]:
        payload_schema(tp, schemas)
        whole = schemas[tp.__name__]
        return {
            "type": "object",
            "properties": {k: whole["properties"][k] for k in keys},
            "required": list(keys),
            "additionalProperties": False,
        }

    tool = typing.get_type_hints(ev.ToolEvent)["tool"]
    schemas["ChatResult"] = {**CHAT_RESULT_SCHEMA, "title": "ChatResult"}
    return {
        "sse.delta": _message("delta", "delta", _doc(ev.DeltaEvent), picked(ev.DeltaEvent, "text")),
        "sse.tool": _message("tool", "tool", _doc(ev.ToolEvent), payload_schema(tool, schemas)),
        "sse.done": _message(
            "done",
            "done",
            "The turn completed and is recorded: the reply, its tokens and its cost.",
            {"$ref": _SCHEMAS + "ChatResult"},
        ),
        "sse.cancelled": _message(
            "cancelled",
            "cancelled",
            _doc(ev.CancelledEvent),
            picked(ev.CancelledEvent, "session_id"),
        ),
        "sse.error": _message(
            "error",
            "error",
            "The turn ended with this refusal, after the stream began (a refusal before the "
            "reply's first word answers with its own HTTP status and the error shape instead).",
            payload_schema(ev.ErrorBody, schemas),
        ),
    }


def asyncapi_document(*, host: str, secure: bool) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the chat's streams, for a console reached at ``host``."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    client: list[str] = []
    server: list[str] = []
    for tp in (*CLIENT_FRAMES, *SERVER_EVENTS):
        kind = _event_type(tp)
        key = f"ws.{kind}"
        messages[key] = _message(kind, tp.__name__, _doc(tp), payload_schema(tp, schemas))
        (client if tp in CLIENT_FRAMES else server).append(key)
    schemas["ErrorBody"]["properties"]["code"]["description"] = (
        "A stable code; the console's are: " + ", ".join(sorted(ERROR_CODES)) + "."
    )
    sse = _sse_messages(schemas)
    messages.update(sse)
    protocol = _doc(ev)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"{settings.SPECTACULAR_SETTINGS['TITLE']}: chat streams",
            "version": settings.SPECTACULAR_SETTINGS["VERSION"],
            "description": (
                "A turn's events, over the chat WebSocket and as server-sent events. The "
                "operations are the console's: it receives the client's frames and sends the "
                "events. The REST routes are described by the OpenAPI schema at /api/schema/.\n\n"
                + protocol
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "websocket": {
                "host": host,
                "protocol": "wss" if secure else "ws",
                "description": "The chat WebSocket: the browser's session cookie, and an "
                "Origin among ALLOWED_HOSTS.",
            },
            "http": {
                "host": host,
                "protocol": "https" if secure else "http",
                "description": "The REST API: an API key or JWT as a Bearer token.",
            },
        },
        "channels": {
            "chat": {
                "address": "/ws/chat/",
                "title": "Chat over WebSockets",
                "description": protocol
                + f"\n\nA socket refused during the handshake is closed with {CLOSE_ANONYMOUS} "
                f"(anonymous) or {CLOSE_SUSPENDED} (suspended).",
                "servers": [{"$ref": "#/servers/websocket"}],
                "messages": {
                    key: {"$ref": f"#/components/messages/{key}"}
                    for key in messages
                    if key.startswith("ws.")
                },
            },
            "sessionMessages": {
                "address": "/api/v1/sessions/{session_id}/messages",
                "title": "A turn as server-sent events",
                "description": (
                    "The answer to `POST /api/v1/sessions/{session_id}/messages` with "
                    '`"stream": true` (and to `POST /agents/{agent_id}/v1/agent/chat`), as '
                    "`text/event-stream`: `delta` and `tool` events, then one of `done`, "
                    "`cancelled` or `error`. Each frame is `event: <name>` and "
                    "`data: <JSON payload>`. A refusal before the reply's first word is no "
                    "stream: its own HTTP status and the error shape.\n\n"
                    "After a reconnect: a stream whose connection drops goes on. The same "
                    "request sent again with the same `Idempotency-Key` follows the turn again "
                    "from its first event (`Idempotent-Replayed: true`); a page can also follow "
                    "it on the chat WebSocket with `open` or `resume`."
                ),
                "servers": [{"$ref": "#/servers/http"}],
                "parameters": {"session_id": {"description": "The session's id (a UUID)."}},
                "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in sse},
            },
        },
        "operations": {
            "receiveClientFrames": {
                "action": "receive",
                "channel": {"$ref": "#/channels/chat"},
                "title": "The client's frames",
                "description": "Client to server: "
                + ", ".join(f"`{_event_type(tp)}`" for tp in CLIENT_FRAMES)
                + ". A refused frame is answered with an `error` without `seq`, to this "
                "socket only; the socket stays open.",
                "messages": _refs("chat", client),
            },
            "sendServerEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/chat"},
                "title": "The session's events",
                "description": protocol,
                "messages": _refs("chat", server),
            },
            "sendTurnStream": {
                "action": "send",
                "channel": {"$ref": "#/channels/sessionMessages"},
                "title": "A turn's server-sent events",
                "description": "`delta` (and `tool`) events as the reply is written, then one "
                "of `done`, `cancelled` or `error`; the stream ends with it.",
                "bindings": {"http": {"method": "POST", "bindingVersion": "0.3.0"}},
                "messages": _refs("sessionMessages", list(sse)),
            },
        },
        "components": {"schemas": schemas, "messages": messages},
    }


@methods_allowed("GET")
def asyncapi_view(request: HttpRequest) -> HttpResponse:
    """``GET /api/asyncapi/``: the document as JSON, or as YAML with ``?format=yaml``."""
    document = asyncapi_document(host=request.get_host(), secure=request.is_secure())
    if request.GET.get("format") == "yaml":
        text = yaml.safe_dump(json.loads(json.dumps(document)), sort_keys=False)
        return HttpResponse(text, content_type="application/yaml")
    return JsonResponse(document, json_dumps_params={"indent": 2})
