"""The ``claude_agent_sdk`` architecture: each turn runs the Claude Agent SDK, whose Claude Code
CLI works in the sandbox's workspace and reaches Claude through the console's gateway only.

The CLI speaks HTTP over TCP, and the sandbox has no network: it calls a proxy this runtime
serves on loopback (``GatewayProxy``), which passes ``/v1/messages`` on to the gateway over the
sandbox's one way out, with the agent's gateway token. The CLI never holds that token, only a
key the proxy accepts for the one turn it runs; every other path is refused. Its messages are
turned into the built-in loop's events: text deltas, one ``tool`` event per tool result, and the
answer with its usage. A session's later turns resume the CLI's own session of the earlier
ones (kept in a private folder for as long as the runtime runs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError, web

from agents.runtime.architectures import CLAUDE_AGENT_SDK, ChatError, turn_result
from agents.runtime.loop import round_limit_note, tool_event, tool_result_block
from agents.runtime.tools import ToolResult, command_environment
from agents.runtime.tracing import request_id_header

__all__ = ["SDK_TOOLS", "GatewayProxy", "SdkArchitecture", "SdkTurn", "sdk_tools"]

log = logging.getLogger("agents.runtime.agentsdk")

# The SDK's tools each of the runtime's built-in tools stands for (``AGENT_TOOLS`` narrows them
# alike). None reaches the network (there is none), nor starts subagents.
SDK_TOOLS = {
    "run_command": ("Bash",),
    "read_file": ("Read", "Glob", "Grep"),
    "write_file": ("Write", "Edit"),
}
# The CLI's requests go to the gateway only, and it calls no one else: no telemetry, error
# reports, update checks or feature flags. The gateway retries Anthropic itself.
_QUIET = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
    "CLAUDE_CODE_MAX_RETRIES": "0",
}
_PASSED_ON = ("anthropic-version", "anthropic-beta", "content-type", "accept", "user-agent")
_MESSAGES = "/v1/messages"
_BODY_LIMIT = 32 * 1024 * 1024
_CHUNK = 65536


def sdk_tools(enabled: tuple[str, ...]) -> list[str]:
    """The SDK's tools for the runtime's enabled built-in tools."""
    return [tool for name in enabled for tool in SDK_TOOLS.get(name, ())]


TRANSCRIPT_BLOCK_CHARS = 4000


def _tool_use_block(use: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}


def transcript(history: list[dict[str, Any]]) -> str:
    """Earlier turns of a session as text for a CLI session that starts without them: each
    message's text, tool calls and (cut at ``TRANSCRIPT_BLOCK_CHARS``) tool results."""
    lines = []
    for message in history:
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks or []:
            kind = block.get("type")
            if kind == "text" and block.get("text"):
                lines.append(f"{message.get('role')}: {block['text']}")
            elif kind == "tool_use":
                lines.append(f"tool call {block.get('name')}: {json.dumps(block.get('input'))}")
            elif kind == "tool_result":
                output = block.get("content")
                if isinstance(output, list):
                    output = " ".join(str(part.get("text", "")) for part in output)
                lines.append(f"tool result: {str(output)[:TRANSCRIPT_BLOCK_CHARS]}")
    body = "\n".join(lines)
    return f"<earlier_conversation>\n{body}\n</earlier_conversation>"


def _text_delta(event: dict[str, Any]) -> str:
    """The text a raw stream event of Anthropic's adds to a reply ("" for any other event)."""
    delta = event.get("delta") or {}
    if event.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
        return str(delta.get("text", ""))
    return ""


def _anthropic_error(status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status)


@dataclass(frozen=True, slots=True)
class _Pass:
    """What one turn's key lets the CLI do: call the gateway for this console session."""

    console_session: str | None
    request_id: dict[str, str]


class GatewayProxy:
    """``POST /v1/messages`` on loopback, passed on to the gateway for the turn whose key the
    caller sends (``x-api-key`` or ``Authorization: Bearer``); any other path is refused."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.passes: dict[str, _Pass] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=_BODY_LIMIT)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def admit(self, console_session: str | None) -> str:
        key = "turn-" + secrets.token_urlsafe(32)
        self.passes[key] = _Pass(console_session, request_id_header())
        return key

    def revoke(self, key: str) -> None:
        self.passes.pop(key, None)

    def _pass(self, request: web.Request) -> _Pass | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key")
        return self.passes.get(key or "")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        granted = self._pass(request)
        if granted is None:
            return _anthropic_error(401, "authentication_error", "this key is not a turn's")
        if request.method != "POST" or request.path.rstrip("/") != _MESSAGES:
            log.info("the CLI asked for %s %s: refused", request.method, request.path)
            message = f"the console's gateway serves POST {_MESSAGES} only"
            return _anthropic_error(404, "not_found_error", message)
        return await self._forward(request, granted)

    async def _forward(self, request: web.Request, granted: _Pass) -> web.StreamResponse:
        config, http = self.state.config, self.state.http
        headers = {name: request.headers[name] for name in _PASSED_ON if name in request.headers}
        headers |= granted.request_id | {"x-api-key": config.gateway_token}
        if granted.console_session:
            headers["x-console-session"] = granted.console_session
        if config.gateway.host_header:
            headers["Host"] = config.gateway.host_header
        body = await request.read()
        try:
            upstream = await http.post(
                f"{config.gateway.url}{_MESSAGES}",
                data=body,
                headers=headers,
                server_hostname=config.gateway.tls_name,
            )
        except (ClientError, TimeoutError) as exc:
            message = f"the console gateway is unreachable: {exc}"
            return _anthropic_error(502, "api_error", message)
        async with upstream:
            response = web.StreamResponse(status=upstream.status)
            for name in ("content-type", "request-id", "retry-after", "x-should-retry"):
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await response.write(chunk)
            await response.write_eof()
        return response


@dataclass
class _Resume:
    """Where a turn left the CLI's session: its id and the last message's uuid."""

    session_id: str
    at: str | None


@dataclass
class SdkArchitecture:
    """The runtime's turns run by the Claude Agent SDK."""

    state: Any
    name: str = CLAUDE_AGENT_SDK
    proxy: GatewayProxy = field(init=False)
    resumes: dict[str, list[_Resume]] = field(default_factory=dict)
    config_dir: str = ""

    def __post_init__(self) -> None:
        self.proxy = GatewayProxy(self.state)

    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        # The CLI's own settings and sessions, outside the workspace the agent's user sees.
        with tempfile.TemporaryDirectory(prefix="claude-") as folder:
            self.config_dir = folder
            await self.proxy.start()
            yield
            await self.proxy.stop()

    def turn(self, session: Any, max_tokens: int) -> SdkTurn:
        return SdkTurn(self, session, max_tokens)


class SdkTurn:
    """One chat turn run by the SDK, streamed as the built-in loop's events."""

    def __init__(self, architecture: SdkArchitecture, session: Any, max_tokens: int) -> None:
        self.architecture, self.session, self.max_tokens = architecture, session, max_tokens
        self.state = architecture.state
        self.usage = {"input_tokens": 0, "output_tokens": 0}
        self.content = ""
        self.messages: list[dict[str, Any]] = []  # what this turn added to the history

    def add(self, entry: dict[str, Any]) -> None:
        self.session.history.append(entry)
        self.messages.append(entry)

    def _resume(self) -> _Resume | None:
        """The CLI session to go on from: the last turn this one keeps (a regenerated or
        edited turn goes on from an earlier one, forking it), or None for a first turn."""
        history = self.session.history
        kept = sum(1 for e in history if e["role"] == "user" and isinstance(e["content"], str))
        points = self.architecture.resumes.setdefault(self.session.id, [])
        del points[max(kept - 1, 0) :]
        return points[-1] if points else None

    def _options(self, key: str, resume: _Resume | None) -> Any:
        from claude_agent_sdk import ClaudeAgentOptions

        config, tools = self.state.config, self.state.toolbox.config
        chosen = sdk_tools(tools.enabled)
        # The runtime's environment reaches the CLI (the SDK passes it on): its secrets blanked.
        hidden = set(os.environ) - set(command_environment(os.environ, config.gateway_token))
        env = {name: "" for name in hidden} | _QUIET
        env |= {
            "ANTHROPIC_BASE_URL": self.architecture.proxy.url,
            "ANTHROPIC_API_KEY": key,
            "CLAUDE_CONFIG_DIR": self.architecture.config_dir,
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(self.max_tokens),
        }
        system: Any = {"type": "preset", "preset": "claude_code"}
        if config.system_prompt:
            system["append"] = config.system_prompt
        return ClaudeAgentOptions(
            model=config.model,
            system_prompt=system,
            cwd=str(tools.workspace),
            env=env,
            tools=chosen,
            allowed_tools=chosen,
            permission_mode="dontAsk",
            setting_sources=[],
            max_turns=tools.max_rounds + 1,
            include_partial_messages=True,
            resume=resume.session_id if resume else None,
            resume_session_at=resume.at if resume else None,
            fork_session=resume is not None,
            stderr=lambda line: log.info("claude: %s", line),
        )

    def _count(self, usage: dict[str, Any]) -> None:
        for kind in ("input_tokens", "output_tokens"):
            value = int(usage.get(kind) or 0)
            self.usage[kind] = value
            self.state.metrics.tokens.labels(kind.removesuffix("_tokens")).inc(value)

    async def stream(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        # An optional extra: a runtime of the built-in architecture never loads it.
        from claude_agent_sdk import (
            AssistantMessage,
            ClaudeSDKError,
            ResultMessage,
            StreamEvent,
            TextBlock,
            ToolResultBlock,
            ToolUseBlock,
            UserMessage,
            query,
        )

        proxy = self.architecture.proxy
        key = proxy.admit(self.session.id if self.session.console_session else None)
        resume = self._resume()
        uses: dict[str, ToolUseBlock] = {}
        last: tuple[str, str | None] | None = None
        answer, reply = "", None
        result: ResultMessage | None = None
        prompt = self.session.history[-1]["content"]
        if resume is None and len(self.session.history) > 1:
            # A history the CLI never saw (the runtime started afresh, and the console gave it
            # the session's stored turns): it goes with the prompt, as a transcript.
            prompt = f"{transcript(self.session.history[:-1])}\n\n{prompt}"
        messages = query(prompt=prompt, options=self._options(key, resume))
        try:
            # Closed here, whatever ends the turn: a caller gone away stops the CLI with it.
            async with contextlib.aclosing(messages):
                async for message in messages:
                    if isinstance(message, StreamEvent) and message.parent_tool_use_id is None:
                        if text := _text_delta(message.event):
                            yield "delta", {"text": text}
                    elif isinstance(message, AssistantMessage):
                        if message.parent_tool_use_id is None:
                            # A reply may come as several messages, a block or so each.
                            if message.message_id != reply:
                                reply, answer = message.message_id, ""
                            answer += "".join(
                                b.text for b in message.content if isinstance(b, TextBlock)
                            )
                            last = (message.session_id or "", message.uuid)
                        uses |= {b.id: b for b in message.content if isinstance(b, ToolUseBlock)}
                    elif isinstance(message, UserMessage) and isinstance(message.content, list):
                        for block in message.content:
                            if isinstance(block, ToolResultBlock):
                                yield "tool", self._tool(uses.get(block.tool_use_id), block)
                    elif isinstance(message, ResultMessage):
                        result = message
        except ClaudeSDKError as exc:
            if result is None:  # else it raised once its result had said why: read below
                message = f"the Claude Agent SDK failed: {exc}"
                raise ChatError(502, "agent_sdk_failed", message) from exc
        finally:
            proxy.revoke(key)
        if result is None:
            raise ChatError(502, "agent_sdk_failed", "the Claude Agent SDK ended with no result")
        self._count(result.usage or {})
        if result.subtype == "error_max_turns":
            # As the built-in loop does: the turn ends with what was written, and says why.
            note = round_limit_note(self.state.toolbox.config.max_rounds)
            self.content = "\n\n".join(filter(None, (answer, note)))
        elif result.is_error:
            raise self._failure(result)
        else:
            self.content = result.result if isinstance(result.result, str) else answer
        # The CLI keeps the turn's tool calls in its own session; the history keeps the answer.
        self.add({"role": "assistant", "content": [{"type": "text", "text": self.content}]})
        session_id = result.session_id or (last[0] if last else "")
        at = last[1] if last else None
        self.architecture.resumes.setdefault(self.session.id, []).append(_Resume(session_id, at))

    def _tool(self, use: Any, block: Any) -> dict[str, Any]:
        content = block.content
        if isinstance(content, list):
            content = "\n".join(str(part.get("text", part)) for part in content)
        output = ToolResult(str(content or ""), bool(block.is_error))
        call = {"name": use.name, "input": use.input} if use is not None else {}
        outcome = "error" if output.is_error else "ok"
        self.state.metrics.tool_calls.labels(call.get("name", "unknown"), outcome).inc()
        if use is not None:
            # Kept in the history as the built-in loop keeps its rounds (one call a round), so
            # that the stored turn holds what the tool returned.
            self.add({"role": "assistant", "content": [_tool_use_block(use)]})
            self.add({"role": "user", "content": [tool_result_block(_tool_use_block(use), output)]})
        return tool_event(call, output)

    @staticmethod
    def _failure(result: Any) -> ChatError:
        """The gateway's refusal (its status, as the CLI saw it) or the CLI's own failure."""
        reason = "; ".join(result.errors or []) or str(result.result or result.subtype)
        status = result.api_error_status or 502
        return ChatError(status if status >= 400 else 502, "agent_sdk_error", reason)

    async def run(self) -> str:
        async for _ in self.stream():
            pass
        return self.content

    def result(self, content: str) -> dict[str, Any]:
        return turn_result(self, content)
