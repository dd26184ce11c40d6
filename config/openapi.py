"""The parts of the OpenAPI schema drf-spectacular cannot see, added by a postprocessing hook.

drf-spectacular documents DRF views only. The per-agent chat and metrics routes, the turns and
the agents' workspace files and commands are plain async Django views, and the gateway is an
ASGI app of its own (gateway/app.py) in front of Django: they are described here, beside the
error shape every route answers a refusal with.
"""

from __future__ import annotations

from typing import Any

from wire import turns
from wire.workspace import EXEC_OUTPUT_CEILING, EXEC_TIMEOUT_CEILING

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
    "ChatResult": turns.CHAT_RESULT_SCHEMA,
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


# --- An agent's workspace: files and commands (agents/workspace_api.py) -------------------------

_ANY_AUTH = [{"ApiKey": []}, {"Jwt": []}, {"cookieAuth": []}]
_FILE_PATH = {
    "name": "path",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 4096},
    "description": "The file's path in the workspace, relative to it; `/` separates folders "
    "(sent as they are, or encoded). Absolute paths, `..`, NUL bytes and symlinks that lead "
    "out of the workspace are refused (400 `invalid_path`).",
}
_DIR_QUERY = {
    "name": "path",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "maxLength": 4096, "default": ""},
    "description": "A directory of the workspace, relative to it (default: the workspace).",
}
_WORKSPACE_NOTES = (
    " For the agent's owner only (anyone else: 404 `agent_not_found`); 409 "
    "`agent_not_running` unless the agent runs; 502 when its runtime cannot be reached."
)
_LIMIT_NOTES = (
    " Bounded by the owner's quota: 413 `file_too_large` past `max_file_bytes`, 413 "
    "`workspace_full` when the workspace would hold more than `max_workspace_bytes` (what its "
    "files hold now, besides a file replaced, plus the upload); `details` names the limit and "
    "`limit_bytes`."
)


def _operation(
    operation_id: str,
    summary: str,
    description: str,
    *,
    parameters: list[dict[str, Any]],
    responses: dict[str, Any],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": description + _WORKSPACE_NOTES,
        "tags": ["api"],
        "parameters": [_AGENT_ID, *parameters],
        "security": _ANY_AUTH,
        "responses": {**responses, "default": _ERROR_RESPONSE},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    return operation


_LIMITS = {
    "type": "object",
    "properties": {
        "max_file_bytes": {"type": "integer"},
        "max_workspace_bytes": {"type": "integer"},
    },
    "required": ["max_file_bytes", "max_workspace_bytes"],
}
COMPONENTS |= {
    "WorkspaceEntry": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "path": {"type": "string", "description": "Relative to the workspace."},
            "type": {"type": "string", "enum": ["file", "directory", "symlink", "other"]},
            "size": {"type": "integer", "nullable": True, "description": "Files only."},
            "modified": {"type": "string", "format": "date-time"},
            "target": {"type": "string", "description": "A symlink's target, as written."},
        },
        "required": ["name", "path", "type"],
    },
    "WorkspaceListing": {
        "type": "object",
        "properties": {
            "agent_id": {"type": "string", "format": "uuid"},
            "path": {"type": "string", "description": "The directory, symlinks resolved."},
            "entries": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/WorkspaceEntry"},
                "description": "Directories first, then files, by name; 1000 at most.",
            },
            "truncated": {"type": "boolean", "description": "Whether entries were left out."},
            "workspace_bytes": {"type": "integer", "description": "What its files hold."},
            "limits": _LIMITS,
        },
        "required": ["agent_id", "path", "entries", "truncated", "workspace_bytes", "limits"],
    },
    "WorkspaceFileWritten": {
        "type": "object",
        "properties": {
            "agent_id": {"type": "string", "format": "uuid"},
            "path": {"type": "string"},
            "size": {"type": "integer"},
            "replaced": {"type": "boolean", "description": "Whether it replaced a file."},
        },
        "required": ["agent_id", "path", "size", "replaced"],
    },
    "WorkspaceFilesWritten": {
        "type": "object",
        "properties": {
            "agent_id": {"type": "string", "format": "uuid"},
            "files": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/WorkspaceFileWritten"},
            },
        },
        "required": ["agent_id", "files"],
    },
    "WorkspaceFileDeleted": {
        "type": "object",
        "properties": {
            "agent_id": {"type": "string", "format": "uuid"},
            "path": {"type": "string"},
            "type": {"type": "string", "enum": ["file", "directory", "symlink", "other"]},
            "deleted": {"type": "boolean"},
        },
        "required": ["agent_id", "path", "type", "deleted"],
    },
    "CommandRequest": {
        "type": "object",
        "description": "Either `argv` or `command`.",
        "properties": {
            "argv": {
                "type": "array",
                "items": {"type": "string", "maxLength": 65536},
                "minItems": 1,
                "maxItems": 4096,
                "description": "The program and its arguments, run as they are.",
            },
            "command": {
                "type": "string",
                "minLength": 1,
                "maxLength": 65536,
                "description": "A shell command, run with `/bin/sh -c`.",
            },
            "cwd": {
                "type": "string",
                "maxLength": 4096,
                "default": "",
                "description": "A directory of the workspace to run in (default: the workspace).",
            },
            "timeout_seconds": {
                "type": "number",
                "minimum": 0.001,
                "maximum": EXEC_TIMEOUT_CEILING,
                "default": 60,
                "description": "Killed (with everything it started) past this; at most the "
                "console's AGENT_EXEC_TIMEOUT_SECONDS.",
            },
            "output_limit_bytes": {
                "type": "integer",
                "minimum": 1,
                "maximum": EXEC_OUTPUT_CEILING,
                "description": "The bytes of each output kept; at most (and by default) the "
                "console's AGENT_EXEC_OUTPUT_BYTES.",
            },
        },
    },
    "CommandResult": {
        "type": "object",
        "properties": {
            "agent_id": {"type": "string", "format": "uuid"},
            "exit_code": {
                "type": "integer",
                "nullable": True,
                "description": "Null when it timed out; 127 when it could not be started.",
            },
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "timed_out": {"type": "boolean"},
            "truncated": {"type": "boolean", "description": "Whether output was cut."},
            "stdout_bytes": {"type": "integer", "description": "All it wrote, kept or not."},
            "stderr_bytes": {"type": "integer"},
            "duration_ms": {"type": "integer"},
        },
        "required": [
            "agent_id",
            "exit_code",
            "stdout",
            "stderr",
            "timed_out",
            "truncated",
            "stdout_bytes",
            "stderr_bytes",
            "duration_ms",
        ],
    },
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_MULTIPART = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "file": {
                    "type": "array",
                    "items": {"type": "string", "format": "binary"},
                    "description": "One part per file, each named `file`.",
                }
            },
            "required": ["file"],
        }
    }
}

PATHS |= {
    "/api/v1/agents/{agent_id}/files": {
        "get": _operation(
            "api_v1_agents_files_list",
            "List a directory of an agent's workspace",
            "Its entries (symlinks not followed: shown as such, with their targets), what the "
            "workspace's files hold, and the owner's limits. Needs the `read` scope.",
            parameters=[_DIR_QUERY],
            responses={
                "200": {"description": "The directory.", "content": _json("WorkspaceListing")}
            },
        ),
        "post": _operation(
            "api_v1_agents_files_upload",
            "Upload files into a directory of an agent's workspace",
            "Each part named `file` is written to the directory under its file name, replacing "
            "a file of that name; missing directories are made. Needs the `write` scope; each "
            "upload is in the audit log." + _LIMIT_NOTES,
            parameters=[_DIR_QUERY],
            body=_MULTIPART,
            responses={
                "201": {
                    "description": "The files written.",
                    "content": _json("WorkspaceFilesWritten"),
                }
            },
        ),
    },
    "/api/v1/agents/{agent_id}/files/{path}": {
        "get": _operation(
            "api_v1_agents_files_download",
            "Download a file of an agent's workspace",
            "Its bytes, as an attachment. A symlink inside the workspace is followed; a "
            "directory or anything but a regular file is a 409. Needs the `read` scope.",
            parameters=[_FILE_PATH],
            responses={
                "200": {
                    "description": "The file's bytes.",
                    "content": {"application/octet-stream": _BINARY},
                }
            },
        ),
        "put": _operation(
            "api_v1_agents_files_write",
            "Upload a file to an agent's workspace",
            "The body is the file's content (or a multipart body with one part named `file`). "
            "Missing directories are made; a file (or symlink) of that path is replaced once "
            "the upload is complete. Needs the `write` scope; audited." + _LIMIT_NOTES,
            parameters=[_FILE_PATH],
            body={"application/octet-stream": _BINARY, **_MULTIPART},
            responses={
                "200": {
                    "description": "A file was replaced.",
                    "content": _json("WorkspaceFileWritten"),
                },
                "201": {
                    "description": "The file was made.",
                    "content": _json("WorkspaceFileWritten"),
                },
            },
        ),
        "delete": _operation(
            "api_v1_agents_files_delete",
            "Delete a file, symlink or directory of an agent's workspace",
            "A symlink is removed, not what it leads to; a directory that is not empty only "
            "with `recursive=true` (else 409 `directory_not_empty`). Needs the `write` scope; "
            "audited.",
            parameters=[
                _FILE_PATH,
                {
                    "name": "recursive",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": False},
                    "description": "Delete a directory with everything in it.",
                },
            ],
            responses={
                "200": {"description": "Deleted.", "content": _json("WorkspaceFileDeleted")}
            },
        ),
    },
    "/api/v1/agents/{agent_id}/exec": {
        "post": _operation(
            "api_v1_agents_exec",
            "Run a command in an agent's sandbox",
            "In the workspace (or `cwd`), with no standard input and the environment the "
            "agent's tools get (no credentials). It is killed, with every process it started, "
            "at its time limit; each output is kept up to its limit, the rest counted. Every "
            "command is in the audit log: who, the agent, what ran, its exit code, how long it "
            "took, and whether it timed out or its output was cut. Needs the `write` scope.",
            parameters=[],
            body=_json("CommandRequest"),
            responses={
                "200": {
                    "description": "The command ran (whatever its exit code).",
                    "content": _json("CommandResult"),
                }
            },
        ),
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
