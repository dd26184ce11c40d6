"""The parts of the OpenAPI schema drf-spectacular cannot see, added by a postprocessing hook.

drf-spectacular documents DRF views only. The per-agent chat and metrics routes are plain async
Django views, and the gateway is an ASGI app of its own (gateway/app.py) in front of
Django: they are described here, beside the error shape every route answers a refusal with.
"""

from __future__ import annotations

from typing import Any

from wire import turns

__all__ = ["postprocess_schema"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_RESPONSE = {
    "description": "A refusal, in the console's one error shape.",
    "content": {"application/json": {"schema": _ERROR}},
}
_AGENT_ID = {
    "name": "agent_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
    "description": "The agent's id.",
}
_API_KEY = [{"ApiKey": []}]
_MAX_TOKENS = {
    "type": "integer",
    "minimum": turns.MAX_TOKENS_MIN,
    "maximum": turns.MAX_TOKENS_MAX,
    "default": turns.MAX_TOKENS_DEFAULT,
}

COMPONENTS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every refusal: a stable code, a sentence for people, and details.",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {"type": "object", "additionalProperties": True},
                },
                "required": ["code", "message", "details"],
            }
        },
        "required": ["error"],
    },
    "ChatRequest": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": 200_000},
            "user_id": {
                "type": "string",
                "maxLength": 150,
                "description": "The caller's username; chatting as anyone else is refused.",
            },
            "session_id": {"type": "string", "format": "uuid", "nullable": True},
            "max_tokens": _MAX_TOKENS,
            "stream": {
                "type": "boolean",
                "default": False,
                "description": "Answer as server-sent events instead of one JSON object.",
            },
        },
        "required": ["prompt"],
    },
    "ChatResult": {
        "type": "object",
        "properties": {
            "session_id": {"type": "string"},
            "content": {"type": "string"},
            "usage": {
                "type": "object",
                "properties": {
                    "input_tokens": {"type": "integer"},
                    "output_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                },
                "required": ["input_tokens", "output_tokens", "total_tokens"],
            },
            "cost_usd": {"type": "string", "format": "decimal"},
            "status": {"type": "string", "enum": ["completed"]},
        },
        "required": ["session_id", "content", "usage", "cost_usd", "status"],
    },
    "MessagesRequest": {
        "type": "object",
        "description": "Anthropic's Messages API request; fields beyond these pass through.",
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "max_tokens": {"type": "integer", "minimum": 1},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"type": "string", "enum": ["user", "assistant"]},
                        "content": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "object"}},
                            ]
                        },
                    },
                    "required": ["role", "content"],
                },
            },
            "stream": {"type": "boolean", "default": False},
        },
        "required": ["model", "max_tokens", "messages"],
    },
    "Message": {
        "type": "object",
        "description": "Anthropic's Messages API answer, passed through as Anthropic sent it.",
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string"},
            "role": {"type": "string"},
            "model": {"type": "string"},
            "content": {"type": "array", "items": {"type": "object"}},
            "stop_reason": {"type": "string", "nullable": True},
            "usage": {"type": "object"},
        },
        "required": ["id", "type", "role", "content", "usage"],
    },
}

# Each server-sent event: its type and its JSON payload as text.
_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
            "required": ["data"],
        }
    }
}

_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
    "description": "The session's id.",
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
    "description": "A retry with the same key gets the first answer (24 h).",
}

COMPONENTS |= {
    "SendMessageRequest": {
        "type": "object",
        "properties": {
            "content": {"type": "string", "minLength": 1, "maxLength": 200_000},
            "max_tokens": _MAX_TOKENS,
            "stream": {
                "type": "boolean",
                "default": False,
                "description": "Answer as server-sent events: `delta`, then `done`, `error` or "
                "`cancelled`.",
            },
        },
        "required": ["content"],
    },
    "ExecuteRequest": {
        "type": "object",
        "properties": {
            "task_description": {"type": "string", "minLength": 1, "maxLength": 5000},
            "context": {"description": "Any JSON, given to the agent with the task."},
            "agent_id": {
                "type": "string",
                "format": "uuid",
                "description": "Default: your running agent with the fewest open sessions.",
            },
            "max_tokens": _MAX_TOKENS,
        },
        "required": ["task_description"],
    },
    "ExecuteResult": {
        "type": "object",
        "properties": {
            "result": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "agent_id": {"type": "string", "format": "uuid"},
                    "session_id": {"type": "string", "format": "uuid"},
                    "model": {"type": "string"},
                    "tokens_used": {"type": "integer"},
                    "cost_usd": {"type": "string", "format": "decimal"},
                    "timestamp": {"type": "string", "format": "date-time"},
                },
                "required": ["agent_id", "session_id", "model", "tokens_used", "timestamp"],
            },
            "processing_time_ms": {"type": "number"},
        },
        "required": ["result", "metadata", "processing_time_ms"],
    },
    "CancelResult": {
        "type": "object",
        "properties": {
            "session_id": {"type": "string", "format": "uuid"},
            "cancelled": {"type": "boolean"},
        },
        "required": ["session_id", "cancelled"],
    },
}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _post(
    operation_id: str,
    summary: str,
    description: str,
    *,
    parameters: list[dict[str, Any]],
    request: str | None,
    status: str,
    answer: dict[str, Any],
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": ["api"],
        "parameters": parameters,
        "security": [{"ApiKey": []}, {"Jwt": []}, {"cookieAuth": []}],
        "responses": {status: answer, "default": _ERROR_RESPONSE},
    }
    if request is not None:
        operation["requestBody"] = {"required": True, "content": _json(request)}
    return {"post": operation}


PATHS: dict[str, Any] = {
    "/api/v1/sessions/{session_id}/messages": _post(
        "api_v1_sessions_messages_create",
        "Send a turn in a session",
        "The agent's reply as JSON, or as server-sent events with `stream: true`. 409 when the "
        "session is closed or the agent is not running; a turn stopped through `cancel` answers "
        "409 `turn_cancelled` (or ends its stream with a `cancelled` event).",
        parameters=[_SESSION_ID, _IDEMPOTENCY_KEY],
        request="SendMessageRequest",
        status="200",
        answer={
            "description": "The reply and what the turn cost.",
            "content": _json("ChatResult") | _SSE,
        },
    ),
    "/api/v1/sessions/{session_id}/cancel": _post(
        "api_v1_sessions_cancel_create",
        "Stop the turn in flight in a session",
        "Its call to Anthropic is cancelled, and only what was used is charged. 409 when no "
        "turn is in flight.",
        parameters=[_SESSION_ID],
        request=None,
        status="202",
        answer={"description": "The turn is being stopped.", "content": _json("CancelResult")},
    ),
    "/api/v1/execute": _post(
        "api_v1_execute_create",
        "Run a one-shot task on an agent",
        "In a session of its own, closed after. Naming no agent when none of yours runs, it "
        "waits for your pool to wake (up to AGENT_BOOT_WAIT_SECONDS): 503 `pool_waking` when "
        "none came up in time, 409 when no scaling rule of yours wakes one.",
        parameters=[_IDEMPOTENCY_KEY],
        request="ExecuteRequest",
        status="200",
        answer={"description": "The agent's answer.", "content": _json("ExecuteResult")},
    ),
    "/agents/{agent_id}/v1/agent/chat": {
        "post": {
            "operationId": "agent_chat",
            "summary": "One chat turn with an agent",
            "description": "As JSON, or as server-sent events with `stream: true`. A turn waits "
            "for an agent that is still booting; 502 when its runtime cannot be reached.",
            "tags": ["agents"],
            "parameters": [_AGENT_ID],
            "security": _API_KEY,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}
                },
            },
            "responses": {
                "200": {
                    "description": "The agent's answer and what the turn cost.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ChatResult"}},
                        **_SSE,
                    },
                },
                "default": _ERROR_RESPONSE,
            },
        }
    },
    "/agents/{agent_id}/metrics": {
        "get": {
            "operationId": "agent_metrics",
            "summary": "The agent runtime's own Prometheus metrics",
            "description": "502 when the agent is not running or its runtime cannot be reached.",
            "tags": ["agents"],
            "parameters": [_AGENT_ID],
            "security": _API_KEY,
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "default": _ERROR_RESPONSE,
            },
        }
    },
    "/agents/{agent_id}/health": {
        "get": {
            "operationId": "agent_health",
            "summary": "The agent runtime's own health",
            "description": "Its `status`, `agent_id`, `version` and `timestamp`. 502 when the "
            "agent is not running or its runtime cannot be reached.",
            "tags": ["agents"],
            "parameters": [_AGENT_ID],
            "security": _API_KEY,
            "responses": {
                "200": {
                    "description": "The runtime answers.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "default": _ERROR_RESPONSE,
            },
        }
    },
    "/gateway/v1/messages": {
        "post": {
            "operationId": "gateway_messages",
            "summary": "Anthropic's Messages API, metered against the caller's budgets",
            "description": "Forwarded to Anthropic with the platform's key (or the caller's "
            "own); the answer, Anthropic's errors included, passes through unchanged. The "
            "gateway's own refusals carry Anthropic's `type` fields besides the error shape. "
            "Authenticate with `x-api-key` or `Authorization: Bearer`, using a console API key.",
            "tags": ["gateway"],
            "security": _API_KEY,
            "parameters": [
                {
                    "name": "x-console-session",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "The console session the call is counted against.",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/MessagesRequest"}}
                },
            },
            "responses": {
                "200": {
                    "description": "Anthropic's answer, or its event stream with `stream: true`.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Message"}},
                        **_SSE,
                    },
                },
                "default": _ERROR_RESPONSE,
            },
        }
    },
}


def postprocess_schema(
    result: dict[str, Any], generator: object, request: object, public: bool
) -> dict[str, Any]:
    """SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]: adds the routes drf-spectacular cannot see,
    and the error shape as every operation's other answer."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
    result.setdefault("paths", {}).update(PATHS)
    for operations in result["paths"].values():
        for operation in operations.values():
            operation["responses"].setdefault("default", _ERROR_RESPONSE)
    return result
