"""The runtime's HTTP server: health, readiness, metrics and chat (JSON or an SSE stream),
with Claude's tool-use loop (see ``Turn``, ``loop`` and ``tools``), and the console's routes
for the workspace's files and commands (``workspace_routes``)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientOSError,
    ClientSession,
    ClientTimeout,
    ServerDisconnectedError,
    UnixConnector,
    web,
)
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from agents.runtime.agentsdk import SdkArchitecture
from agents.runtime.architectures import (
    BUILTIN,
    CLAUDE_AGENT_SDK,
    Architecture,
    ChatError,
    TurnRunner,
    turn_result,
)
from agents.runtime.config import RuntimeConfig
from agents.runtime.files import Workspace
from agents.runtime.loop import (
    StreamedReply,
    cache_marked,
    compactable,
    estimate_tokens,
    reply_text,
    round_limit_note,
    summary_messages,
    tool_event,
    tool_result_block,
    tool_uses,
    transcript,
    turn_starts,
)
from agents.runtime.mcptools import McpTools, mcp_servers_from_env
from agents.runtime.tools import Toolbox, ToolConfig
from agents.runtime.tracing import configure_logging, request_id_header, request_ids
from agents.runtime.workspace_routes import workspace_routes_add
from wire import turns
from wire.sse import sse_events, sse_frame

__all__ = ["build_app", "main"]

log = logging.getLogger("agents.runtime")
ANTHROPIC_VERSION = "2023-06-01"
_PR_SET_DUMPABLE = 4
CONFIG_KEY = web.AppKey("config", RuntimeConfig)
STATE_KEY = web.AppKey("state", "RuntimeState")
ARCHITECTURE_KEY = web.AppKey("architecture", Architecture)


class Metrics:
    """The runtime's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.active_sessions = Gauge(
            "agent_active_sessions", "Sessions this agent holds.", registry=self.registry
        )
        self.requests = Counter(
            "agent_requests", "Requests served.", ["endpoint", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "agent_request_duration_seconds",
            "Time to serve a request.",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter(
            "agent_token_usage", "Tokens used, by kind.", ["type"], registry=self.registry
        )
        self.errors = Counter(
            "agent_errors", "Errors, by kind.", ["error_type"], registry=self.registry
        )
        self.tool_calls = Counter(
            "agent_tool_calls",
            "Tool calls Claude made, by tool and outcome (ok or error).",
            ["tool", "status"],
            registry=self.registry,
        )


@dataclass
class ChatSession:
    """One session's history, guarded so that its turns run one at a time."""

    id: str
    # A console session's id goes with every call to the gateway, which checks it; an id the
    # runtime made up for a caller that named none would be refused there, so it is not sent.
    console_session: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    compacted: int = 0  # turns folded into the summary at the head of the history
    # The prompt tokens the last call reported, and the history's length when it was sent.
    reported_tokens: int = 0
    reported_length: int = 0

    @property
    def turns(self) -> int:
        return self.compacted + len(turn_starts(self.history))

    def restore(self, history: list[dict[str, Any]], left_out: int) -> None:
        """Take the history the console stored, in place of whatever this runtime held; its
        ``left_out`` oldest turns did not fit in the request and count as compacted."""
        self.history[:] = history
        self.compacted, self.reported_tokens, self.reported_length = left_out, 0, 0

    def keep_turns(self, turns: int | None) -> list[dict[str, Any]]:
        """Drop every turn after the first ``turns``; return what was dropped."""
        if turns is None:
            return []
        starts = turn_starts(self.history)
        local = max(0, turns - self.compacted)  # a compacted turn cannot be kept alone
        if local >= len(starts):
            return []
        dropped = self.history[starts[local] :]
        del self.history[starts[local] :]
        return dropped


PROMPT_KINDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
SUMMARY_MAX_TOKENS = 2048
SUMMARY_SYSTEM = (
    "You compact a conversation between a user and an AI agent that uses tools, so that the "
    "agent can carry on without it. Write a faithful summary: the user's goals and requests, "
    "what was done (tools called and what they returned that still matters: names, paths, "
    "numbers, errors), decisions and open questions. Plain prose, no preamble."
)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class RuntimeState:
    config: RuntimeConfig
    toolbox: Toolbox
    metrics: Metrics = field(default_factory=Metrics)
    sessions: dict[str, ChatSession] = field(default_factory=dict)
    http: ClientSession | None = None

    def session(self, session_id: str | None) -> ChatSession:
        sid = session_id or str(uuid.uuid4())
        if sid in self.sessions:
            return self.sessions[sid]
        if len(self.sessions) >= self.config.max_concurrent_sessions:
            raise ChatError(
                503,
                "agent_at_capacity",
                f"this agent already holds {len(self.sessions)} sessions, its maximum",
                {"max_concurrent_sessions": self.config.max_concurrent_sessions},
            )
        self.sessions[sid] = ChatSession(sid, console_session=session_id is not None)
        self.metrics.active_sessions.set(len(self.sessions))
        return self.sessions[sid]

    def hold(self, session: ChatSession) -> None:
        """Keep ``session`` registered: a failed first turn may have let it go meanwhile."""
        self.sessions.setdefault(session.id, session)
        self.metrics.active_sessions.set(len(self.sessions))

    def roll_back(
        self, session: ChatSession, first: dict[str, Any] | None, dropped: list[dict[str, Any]]
    ) -> None:
        """Undo a failed turn (from its prompt, ``first``), with the turns it replaced
        (``dropped``) put back; a session left with no history frees its slot."""
        start = next((i for i, entry in enumerate(session.history) if entry is first), None)
        if start is not None:
            del session.history[start:]
        session.history.extend(dropped)
        if not session.history:
            self.sessions.pop(session.id, None)
            self.metrics.active_sessions.set(len(self.sessions))


def _error(status: int, code: str, message: str, details: dict[str, Any] | None = None):
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return web.json_response(body, status=status)


def _parse_chat(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ChatError(400, "invalid_request", "the body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ChatError(
            400,
            "invalid_request",
            "prompt must be a non-empty string",
            {"prompt": ["This field is required."]},
        )
    max_tokens = body.get("max_tokens", turns.MAX_TOKENS_DEFAULT)
    malformed = isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
    if malformed or max_tokens < turns.MAX_TOKENS_MIN:
        raise ChatError(
            400,
            "invalid_request",
            "max_tokens must be a positive integer",
            {"max_tokens": ["Must be a positive integer."]},
        )
    session_id = body.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise ChatError(400, "invalid_request", "session_id must be a string")
    keep_turns = body.get("keep_turns")
    if keep_turns is not None and (
        isinstance(keep_turns, bool) or not isinstance(keep_turns, int) or keep_turns < 0
    ):
        raise ChatError(
            400,
            "invalid_request",
            "keep_turns must be a non-negative integer",
            {"keep_turns": ["Must be a non-negative integer."]},
        )
    held = body.get("turns")
    if held is not None and (isinstance(held, bool) or not isinstance(held, int) or held < 0):
        raise ChatError(
            400,
            "invalid_request",
            "turns must be a non-negative integer",
            {"turns": ["Must be a non-negative integer."]},
        )
    history = body.get("history")
    if history is not None and not _valid_history(history):
        raise ChatError(
            400,
            "invalid_request",
            "history must be a list of user and assistant messages",
            {"history": ["Must be a list of messages."]},
        )
    left_out = body.get("history_left_out", 0)
    if isinstance(left_out, bool) or not isinstance(left_out, int) or left_out < 0:
        raise ChatError(
            400,
            "invalid_request",
            "history_left_out must be a non-negative integer",
            {"history_left_out": ["Must be a non-negative integer."]},
        )
    return {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "session_id": session_id,
        "keep_turns": keep_turns,
        "turns": held,
        "history_left_out": left_out,
        "history": history,
        "stream": bool(body.get("stream", False)),
    }


def _valid_history(history: Any) -> bool:
    if not isinstance(history, list):
        return False
    for message in history:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return False
        content = message.get("content")
        if not isinstance(content, str) and not (
            isinstance(content, list) and all(isinstance(b, dict) for b in content)
        ):
            return False
    return True


class Turn:
    """One chat turn: the requests to the gateway and what came back, summed over its calls.

    While a reply stops for ``tool_use``, its tools run and the gateway is called again with
    their results, for at most ``AGENT_MAX_TOOL_ROUNDS`` rounds. ``content`` is the text of the
    turn's last reply only: text Claude wrote before calling a tool narrates the work (a stream
    sends it as deltas as it comes) and stays in the history, but is not the answer.
    """

    def __init__(self, state: RuntimeState, session: ChatSession, max_tokens: int) -> None:
        self.state, self.session, self.max_tokens = state, session, max_tokens
        self.usage = {"input_tokens": 0, "output_tokens": 0}
        self.content = ""
        self.messages: list[dict[str, Any]] = []  # what this turn added to the history

    def add(self, entry: dict[str, Any]) -> None:
        self.session.history.append(entry)
        self.messages.append(entry)

    def _request(
        self, stream: bool, payload: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        config = self.state.config
        if payload is None:
            system, tools, messages = cache_marked(
                config.system_prompt, self.state.toolbox.definitions, self.session.history
            )
            payload = {"model": config.model, "max_tokens": self.max_tokens, "messages": messages}
            if system:
                payload["system"] = system
            if tools:
                payload["tools"] = tools
        if stream:
            payload["stream"] = True
        headers = {
            "x-api-key": config.gateway_token,
            "anthropic-version": ANTHROPIC_VERSION,
            **request_id_header(),
        }
        if self.session.console_session:
            headers["x-console-session"] = self.session.id
        if config.gateway.host_header:
            headers["Host"] = config.gateway.host_header
        return f"{config.gateway.url}/v1/messages", headers, payload

    def _count(self, usage: dict[str, Any]) -> None:
        for kind in ("input_tokens", "output_tokens"):
            self.usage[kind] += _int(usage.get(kind))
        for kind in (*PROMPT_KINDS, "output_tokens"):
            self.state.metrics.tokens.labels(kind.removesuffix("_tokens")).inc(
                _int(usage.get(kind))
            )

    def _reported(self, usage: dict[str, Any], length: int) -> None:
        """Note the prompt's size as a call reported it, for the next one's estimate."""
        self.session.reported_tokens = sum(_int(usage.get(kind)) for kind in PROMPT_KINDS)
        self.session.reported_length = length

    def _estimate(self) -> int:
        """The next call's prompt tokens: the last reported, plus what was added since."""
        session = self.session
        if not session.reported_tokens or session.reported_length > len(session.history):
            config = self.state.config
            overhead = estimate_tokens([config.system_prompt, self.state.toolbox.definitions])
            return overhead + estimate_tokens(session.history)
        return session.reported_tokens + estimate_tokens(session.history[session.reported_length :])

    async def _compact(self) -> None:
        """Fold the oldest turns into a summary when the next call would near the context
        window; never the turn being run."""
        config = self.state.toolbox.config
        limit = config.context_tokens * config.compact_percent // 100
        if self._estimate() + self.max_tokens <= limit:
            return
        history = self.session.history
        current = next(i for i, entry in enumerate(history) if entry is self.messages[0])
        budget = max(0, limit // 2 - self.max_tokens)
        cut = compactable(history, current, budget)
        if not cut:
            return
        folded = history[:cut]
        payload = {
            "model": self.state.config.model,
            "max_tokens": SUMMARY_MAX_TOKENS,
            "system": SUMMARY_SYSTEM,
            "messages": [{"role": "user", "content": transcript(folded)}],
        }
        async with await self._post(stream=False, payload=payload) as response:
            message = await response.json()
        self._count(message.get("usage", {}))
        summary = reply_text(message.get("content") or []).strip() or "(nothing to keep)"
        self.session.compacted += len([i for i in turn_starts(history) if i < cut])
        history[:cut] = summary_messages(summary)
        self.session.reported_tokens = self.session.reported_length = 0
        log.info("session %s: %d entries compacted into a summary", self.session.id, cut)

    async def _post(self, stream: bool, payload: dict[str, Any] | None = None):
        assert self.state.http is not None
        url, headers, payload = self._request(stream, payload)
        try:
            try:
                response = await self.state.http.post(
                    url,
                    json=payload,
                    headers=headers,
                    server_hostname=self.state.config.gateway.tls_name,
                )
            except (ClientOSError, ServerDisconnectedError):
                # A kept-alive connection that died while idle (a microVM restored from disk
                # finds its old connections gone): once more, on a new one.
                response = await self.state.http.post(
                    url,
                    json=payload,
                    headers=headers,
                    server_hostname=self.state.config.gateway.tls_name,
                )
        except (ClientError, TimeoutError) as exc:
            raise ChatError(
                502, "gateway_unreachable", f"the console gateway is unreachable: {exc}"
            ) from exc
        if response.status >= 400:
            body = await response.json(content_type=None)
            error = body.get("error", {}) if isinstance(body, dict) else {}
            message = error.get("message") or f"gateway answered {response.status}"
            code = error.get("code") or error.get("type") or "gateway_error"
            raise ChatError(response.status, code, message, error.get("details"))
        return response

    def _keep(
        self, content: list[dict[str, Any]], stop_reason: str | None, rounds: int
    ) -> list[dict[str, Any]]:
        """Record a reply; return the tool calls to answer, or [] when the turn is over."""
        uses = tool_uses(content) if stop_reason == "tool_use" else []
        max_rounds = self.state.toolbox.config.max_rounds
        if uses and rounds >= max_rounds:
            # Its tool calls go unanswered, so they leave the history, which must stay valid.
            note = round_limit_note(max_rounds)
            content = [b for b in content if b.get("type") != "tool_use"]
            content.append({"type": "text", "text": note})
            self.content = "\n\n".join(filter(None, (reply_text(content[:-1]), note)))
            uses = []
        else:
            self.content = reply_text(content)
        self.add({"role": "assistant", "content": content})
        return uses

    async def _use_tools(self, uses: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Run the tools in order, yielding a ``tool`` event for each, then answer them all."""
        toolbox, results = self.state.toolbox, []
        for use in uses:
            result = await toolbox.run(use.get("name", ""), use.get("input"))
            label = use.get("name", "") if toolbox.knows(use.get("name", "")) else "unknown"
            status = "error" if result.is_error else "ok"
            self.state.metrics.tool_calls.labels(label, status).inc()
            results.append(tool_result_block(use, result))
            yield tool_event(use, result)
        self.add({"role": "user", "content": results})

    async def run(self) -> str:
        await self.state.toolbox.prepare()
        rounds = 0
        while True:
            await self._compact()
            length = len(self.session.history)
            async with await self._post(stream=False) as response:
                message = await response.json()
            self._count(message.get("usage", {}))
            self._reported(message.get("usage", {}), length)
            uses = self._keep(message["content"], message.get("stop_reason"), rounds)
            if not uses:
                return self.content
            async for _ in self._use_tools(uses):
                pass
            rounds += 1

    async def stream(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The turn as ``delta`` events for the replies' text and a ``tool`` event per tool run."""
        await self.state.toolbox.prepare()
        rounds = 0
        while True:
            await self._compact()
            length = len(self.session.history)
            reply = StreamedReply()
            # Leaving the block unfinished (the caller went away) closes the call to the gateway,
            # which then stops Anthropic's: a stopped reply stops being billed.
            async with await self._post(stream=True) as response:
                async for event, data in sse_events(response.content):
                    if event == "message_start":
                        usage = data["message"].get("usage", {})
                        self._count(usage | {"output_tokens": 0})
                        self._reported(usage, length)
                    elif event == "message_delta":
                        usage = data.get("usage", {})
                        self._count({"output_tokens": usage.get("output_tokens", 0)})
                    elif event == "error":
                        message = data.get("error", {}).get("message", "")
                        raise ChatError(502, "upstream_error", message)
                    if text := reply.feed(event, data):
                        yield "delta", {"text": text}
            uses = self._keep(reply.content, reply.stop_reason, rounds)
            if not uses:
                return
            async for tool in self._use_tools(uses):
                yield "tool", tool
            rounds += 1

    def result(self, content: str) -> dict[str, Any]:
        return turn_result(self, content)


async def chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "malformed_body", "the body is not valid JSON")
    try:
        params = _parse_chat(body)
        session = state.session(params["session_id"])
    except ChatError as exc:
        return _error(exc.status, exc.code, exc.message, exc.details)
    async with session.lock:
        state.hold(session)
        session.last_used = time.monotonic()
        if params["history"] is not None:
            session.restore(params["history"], params["history_left_out"])
        elif params["turns"] is not None and (
            session.turns != params["turns"]
            or (params["keep_turns"] is not None and params["keep_turns"] < session.compacted)
        ):
            # A runtime started afresh (or one whose history differs from the console's):
            # the caller sends the turn again with the session's stored history.
            state.roll_back(session, None, [])
            return _error(
                409,
                "history_required",
                "this runtime does not hold the session's history; send it",
                {"turns": session.turns},
            )
        # A regenerated or edited turn replaces the turns after ``keep_turns``; they come back
        # if it fails.
        dropped = session.keep_turns(params["keep_turns"])
        turn = request.app[ARCHITECTURE_KEY].turn(session, params["max_tokens"])
        turn.add({"role": "user", "content": params["prompt"]})
        first = turn.messages[0]
        if params["stream"]:
            return await _chat_stream(request, turn, dropped)
        try:
            content = await turn.run()
        except ChatError as exc:
            state.roll_back(session, first, dropped)
            state.metrics.errors.labels(exc.code).inc()
            return _error(exc.status, exc.code, exc.message, exc.details)
        except BaseException:
            state.roll_back(session, first, dropped)  # no dangling user turn
            raise
        return web.json_response(turn.result(content))


async def _chat_stream(request: web.Request, turn: TurnRunner, dropped: list[dict[str, Any]]):
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        async for event, data in turn.stream():
            await response.write(sse_frame(event, data))
    except ChatError as exc:
        turn.state.roll_back(turn.session, turn.messages[0], dropped)
        turn.state.metrics.errors.labels(exc.code).inc()
        # Its status and details go with it, as a JSON answer's: the stream's own status was
        # sent before the refusal came.
        error = {"code": exc.code, "message": exc.message, "status": exc.status}
        if exc.details:
            error["details"] = exc.details
        await response.write(sse_frame("error", error))
    except BaseException:
        turn.state.roll_back(turn.session, turn.messages[0], dropped)  # the client went away
        raise
    else:
        await response.write(sse_frame("done", turn.result(turn.content)))
    await response.write_eof()
    return response


def _version() -> str:
    try:
        return importlib.metadata.version("agent-console")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that was not installed
        return "0+unknown"


VERSION = _version()


async def health(request: web.Request) -> web.Response:
    """Liveness, with the fields the AI Agents Platform's health check documents."""
    return web.json_response(
        {
            "status": "ok",
            "agent_id": request.app[CONFIG_KEY].agent_id,
            "version": VERSION,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
    )


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    full = len(state.sessions) >= state.config.max_concurrent_sessions
    return web.json_response(
        {"ready": not full, "sessions": len(state.sessions)}, status=503 if full else 200
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE_KEY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def _measure(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    metrics_ = request.app[STATE_KEY].metrics
    endpoint = (
        request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "unmatched"
    )
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics_.requests.labels(endpoint, str(status)).inc()
        metrics_.duration.labels(endpoint).observe(time.perf_counter() - started)


class GatewaySocketConnector(UnixConnector):
    """The sandbox's gateway socket, over which an ``https`` gateway is spoken in TLS: the
    socket's far end is the gateway's TCP address, relayed byte for byte (aiohttp's own
    UnixConnector speaks plain HTTP whatever the URL's scheme)."""

    def __init__(self, path: str, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(path=path)
        self._tls = tls or ssl.create_default_context()

    async def _create_connection(self, req, traces, timeout):  # type: ignore[no-untyped-def]
        if not req.is_ssl():
            return await super()._create_connection(req, traces, timeout)
        try:
            async with asyncio.timeout(timeout.sock_connect):
                _, proto = await self._loop.create_unix_connection(
                    self._factory,
                    self._path,
                    ssl=self._tls,
                    server_hostname=req.server_hostname or req.host,
                )
        except OSError as exc:  # ssl.SSLError too: the gateway's certificate is not trusted
            raise ClientConnectorError(req.connection_key, exc) from exc
        return proto


@dataclass
class BuiltinArchitecture:
    """The runtime's own tool-use loop (``Turn``)."""

    state: RuntimeState
    name: str = BUILTIN

    def turn(self, session: ChatSession, max_tokens: int) -> Turn:
        return Turn(self.state, session, max_tokens)

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        yield


def _architecture(config: RuntimeConfig, state: RuntimeState) -> Architecture:
    if config.architecture == CLAUDE_AGENT_SDK:
        return SdkArchitecture(state)
    return BuiltinArchitecture(state)


def build_app(config: RuntimeConfig, tools: ToolConfig | None = None) -> web.Application:
    """The runtime's app; ``tools`` is read from the environment when not given."""
    # A turn sent to a runtime started afresh carries the session's stored history.
    app = web.Application(
        middlewares=[request_ids, _measure], client_max_size=turns.HISTORY_MAX_BYTES + 64 * 1024
    )
    app[CONFIG_KEY] = config
    tools = tools or ToolConfig.from_env()
    servers = mcp_servers_from_env()
    mcp = (
        McpTools(
            servers,
            config.gateway,
            config.gateway_token,
            output_limit=tools.output_limit,
            timeout=config.gateway_timeout,
        )
        if servers
        else None
    )
    toolbox = Toolbox(tools, gateway_token=config.gateway_token, mcp=mcp)
    app[STATE_KEY] = state = RuntimeState(config, toolbox)

    async def _client(app: web.Application) -> AsyncIterator[None]:
        socket_path = config.gateway.socket
        connector = GatewaySocketConnector(socket_path) if socket_path else None
        state.http = ClientSession(
            connector=connector, timeout=ClientTimeout(total=config.gateway_timeout)
        )
        yield
        await state.http.close()

    app.cleanup_ctx.append(_client)
    app[ARCHITECTURE_KEY] = architecture = _architecture(config, state)
    app.cleanup_ctx.append(architecture.lifespan)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/agent/chat", chat)
    workspace_routes_add(app, Workspace(tools.workspace), toolbox.environment)
    return app


def _hide_environment() -> None:
    """Make this process non-dumpable, so the commands its tools run (same user, no
    capabilities) cannot read its environment, and with it the gateway token, from /proc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def main() -> None:
    configure_logging()
    _hide_environment()
    config = RuntimeConfig.from_env()
    tools = ToolConfig.from_env()
    where = config.socket_path or f"{config.host}:{config.port}"
    log.info(
        "agent %s listening on %s; tools: %s in %s",
        config.agent_id,
        where,
        ", ".join(tools.enabled) or "none",
        tools.workspace,
    )
    listen = (
        {"path": config.socket_path}
        if config.socket_path
        else {"host": config.host, "port": config.port}
    )
    # A caller that goes away cancels its turn, and with it the call to the gateway (and
    # Anthropic's): a stopped reply stops being billed.
    web.run_app(
        build_app(config, tools),
        print=None,
        handle_signals=True,
        handler_cancellation=True,
        **listen,
    )
