"""A fake of Anthropic's Messages API served over real HTTP on 127.0.0.1.

``FakeAnthropic`` runs an aiohttp server on its own event loop in a daemon thread and
speaks the real wire protocol, so the unmodified ``anthropic`` SDK (sync or async) can
point ``base_url`` at it. Replies are scripted with ``enqueue()`` (FIFO); when the queue
is empty the reply is ``"Echo: <text of the last user message>"`` (or
``"Tool result: <text>"`` when that message carries ``tool_result`` blocks).

Token counting is deterministic, see ``count_tokens``:

* ``input_tokens`` = ``count_tokens`` of the newline-joined system prompt, every message's
  text (text blocks, tool_result text, ``json.dumps`` of tool_use inputs) and, when tools
  are given, ``json.dumps(tools)``.
* ``output_tokens`` = ``count_tokens`` of the reply text, newline-joined with
  ``json.dumps`` of the tool_use input for tool-use replies.

As Anthropic does, ``usage`` breaks cache writes down by lifetime (``cache_creation``:
``ephemeral_5m_input_tokens``, ``ephemeral_1h_input_tokens``) and counts server tools
(``server_tool_use.web_search_requests``, when a reply used any). ``Text(usage=...)`` sends
any ``usage`` value verbatim instead, hostile ones included. ``answered`` holds the usage each
reply reported, in order: the final one, or the last a client read of a stream cut short.

Prompt caching is honoured as Anthropic does it: a block with ``cache_control`` (at most four
of them in tools, system and messages, else 400) marks a breakpoint; the prefix up to it (tools,
then system, then messages) is written to the cache when it counts at least
``cache_min_tokens`` (1024, Anthropic's minimum for most models), and a later request reads the
longest prefix written before that ends at a block boundary within 20 blocks before one of its
breakpoints. ``cache_read_input_tokens`` counts that prefix, ``cache_creation_input_tokens``
the rest up to the last breakpoint, ``input_tokens`` what follows. A scripted ``Text`` with
cache counts of its own reports those instead. Entries never expire.

Text replies honour ``stop_sequences`` (cut at the earliest match) and then ``max_tokens``
(longest prefix whose count fits); tool-use replies are never truncated.

Run ``python -m tests.fakes.anthropic --port 0`` to serve until SIGINT/SIGTERM; it prints
``FAKE_ANTHROPIC_URL=http://127.0.0.1:PORT`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import secrets
import signal
import string
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["Error", "FakeAnthropic", "Hang", "RecordedRequest", "Text", "ToolUse", "count_tokens"]

_PUNCTUATION = frozenset(string.punctuation)
_DEFAULT_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def count_tokens(text: str) -> int:
    """Return the fake's token count: whitespace-separated words plus punctuation characters.

    The empty string counts 0; any other string counts at least 1.
    """
    if not text:
        return 0
    return max(1, len(text.split()) + sum(1 for ch in text if ch in _PUNCTUATION))


_UNSET: Any = object()


@dataclass(frozen=True)
class Text:
    """Scripted text reply; ``None`` token counts are computed with ``count_tokens``.

    ``cache_creation_input_tokens`` are 5-minute cache writes, ``cache_creation_1h_input_tokens``
    1-hour ones; ``usage`` replaces the whole usage object; ``model`` answers as another model;
    ``cut_after`` breaks a stream's connection off after that many text deltas."""

    text: str
    stop_reason: str = "end_turn"
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    web_search_requests: int = 0
    usage: Any = _UNSET
    model: str | None = None
    cut_after: int | None = None


@dataclass(frozen=True)
class ToolUse:
    """Scripted tool call: an optional text block then a tool_use block (stop_reason tool_use)."""

    name: str
    input: dict[str, Any]
    id: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class Error:
    """Scripted HTTP error in Anthropic's error shape; ``type`` defaults from ``status``."""

    status: int
    type: str | None = None
    message: str = "Scripted error from FakeAnthropic"
    retry_after: float | None = None


@dataclass(frozen=True)
class Hang:
    """Wait ``seconds`` (or until the client goes away) before sending the default reply.

    With ``release``, the wait also ends as soon as that event is set (from any thread), so a
    test can hold calls open for exactly as long as it needs them.
    """

    seconds: float
    release: threading.Event | None = None


Scripted = Text | ToolUse | Error | Hang


@dataclass
class RecordedRequest:
    """One HTTP request as the fake received it; ``headers`` keys are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any = None

    @property
    def api_key(self) -> str | None:
        """Credential sent as ``x-api-key`` or, as newer SDKs do, ``Authorization: Bearer``."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None


@dataclass
class _Reply:
    """A fully resolved assistant reply, ready to be rendered as JSON or SSE."""

    text: str | None
    stop_reason: str
    stop_sequence: str | None
    usage: Any
    tool: dict[str, Any] | None = None
    model: str | None = None
    verbatim: bool = False  # the usage was scripted whole: sent as it is, in every event
    cut_after: int | None = None


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")


def _block_text(block: Any) -> str:
    """Text carried by one content block, as counted for input tokens."""
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_result":
        return _content_text(block.get("content", ""))
    if kind == "tool_use":
        return json.dumps(block.get("input", {}))
    return ""


def _content_text(content: Any, sep: str = "\n") -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return sep.join(t for t in (_block_text(b) for b in content) if t)
    return ""


def _input_tokens(body: dict[str, Any]) -> int:
    parts = [_content_text(body.get("system", ""))]
    parts += [_content_text(m.get("content", "")) for m in body["messages"] if isinstance(m, dict)]
    if body.get("tools"):
        parts.append(json.dumps(body["tools"]))
    return count_tokens("\n".join(p for p in parts if p))


def _default_text(messages: list[Any]) -> str:
    last = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), {}
    )
    content = last.get("content", "")
    if isinstance(content, list):
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            return "Tool result: " + "\n".join(_block_text(b) for b in results)
        texts = [b for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return "Echo: " + "".join(_block_text(b) for b in texts)
    return "Echo: " + _content_text(content)


CACHE_BREAKPOINTS = 4
CACHE_LOOKBACK_BLOCKS = 20


def _unmarked(block: Any) -> Any:
    return (
        {k: v for k, v in block.items() if k != "cache_control"}
        if isinstance(block, dict)
        else block
    )


def _prompt_units(body: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The prompt's blocks in cache order (tools, system, messages), each as (its identity
    without ``cache_control``, its text as counted, whether it carries a breakpoint). A string
    is the text block it stands for, as Anthropic reads it."""

    def blocks(content: Any) -> list[Any]:
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if content else []
        return content if isinstance(content, list) else []

    units: list[tuple[str, str, bool]] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            text = json.dumps(_unmarked(tool))
            units.append((_dumps(["tool", _unmarked(tool)]), text, "cache_control" in tool))
    where: list[tuple[Any, Any]] = [("system", b) for b in blocks(body.get("system"))]
    for n, message in enumerate(body["messages"]):
        if isinstance(message, dict):
            where += [((n, message.get("role")), b) for b in blocks(message.get("content"))]
    for place, block in where:
        marked = isinstance(block, dict) and "cache_control" in block
        units.append((_dumps([place, _unmarked(block)]), _block_text(block), marked))
    return units


def _breakpoints(body: dict[str, Any]) -> int:
    return sum(marked for _, _, marked in _prompt_units(body))


def _fit(text: str, max_tokens: int) -> str:
    """Longest prefix of ``text`` whose count fits ``max_tokens`` (the count is monotonic)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def _validate(body: Any, need_max_tokens: bool) -> str | None:
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if not body.get("model"):
        return "model: Field required"
    if "messages" not in body:
        return "messages: Field required"
    if not isinstance(body["messages"], list) or not body["messages"]:
        return "messages: at least one message is required"
    if need_max_tokens:
        if "max_tokens" not in body:
            return "max_tokens: Field required"
        value = body["max_tokens"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return "max_tokens: Input should be a positive integer"
    if (marks := _breakpoints(body)) > CACHE_BREAKPOINTS:
        most = CACHE_BREAKPOINTS
        return f"A maximum of {most} blocks with cache_control may be provided. Found {marks}."
    return None


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()


def _pieces(text: str) -> list[str]:
    """Word-sized chunks (each keeps its trailing whitespace) that concatenate to ``text``."""
    return [p for p in re.split(r"(?<=\s)(?=\S)", text) if p]


class FakeAnthropic:
    """Real HTTP server imitating ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

    With ``required_api_key`` set, requests whose key (``x-api-key`` or ``Authorization:
    Bearer``) differs get 401 ``authentication_error``. ``chunk_delay`` seconds separate
    streamed deltas. ``disconnects`` counts clients that went away mid-reply.
    """

    def __init__(
        self,
        *,
        chunk_delay: float = 0.0,
        required_api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        cache_min_tokens: int = 1024,
    ) -> None:
        self.chunk_delay = chunk_delay
        self.cache_min_tokens = cache_min_tokens
        self._cache: set[str] = set()
        self.required_api_key = required_api_key
        self.host = host
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.answered: list[Any] = []
        self._requested_port = port
        self._port: int | None = None
        self._queue: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def start(self) -> FakeAnthropic:
        """Start serving in a background thread; returns ``self`` once the port is bound."""
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        try:
            self._port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and its thread; in-flight requests get at most ~1 s to finish."""
        if self._thread is None or self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._thread = self._loop = self._runner = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (only valid after ``start()``)."""
        if self._port is None:
            raise RuntimeError("FakeAnthropic is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """URL to pass as the SDK's ``base_url``, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def enqueue(self, *responses: Scripted) -> None:
        """Append scripted replies, consumed in order by valid ``/v1/messages`` requests."""
        with self._lock:
            self._queue.extend(responses)

    def reset(self) -> None:
        """Forget scripted replies, recorded requests and the disconnect counter."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.answered.clear()
            self._cache.clear()
            self.disconnects = 0

    def _pop(self) -> Scripted | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    async def _serve(self) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return int(runner.addresses[0][1])

    def _error(
        self, status: int, kind: str | None, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        request_id = _new_id("req_")
        error = {"type": kind or _DEFAULT_ERROR_TYPES.get(status, "api_error"), "message": message}
        body = {"type": "error", "error": error, "request_id": request_id}
        headers = {"request-id": request_id, **(headers or {})}
        return web.json_response(body, status=status, headers=headers, dumps=_dumps)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
            bad_json = False
        except ValueError:
            body, bad_json = None, True
        headers = {k.lower(): v for k, v in request.headers.items()}
        recorded = RecordedRequest(request.method, request.path, headers, body)
        self.requests.append(recorded)

        if self.required_api_key is not None and recorded.api_key != self.required_api_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        path = request.path.rstrip("/")
        if request.method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            return self._error(
                404, "not_found_error", f"Not found: {request.method} {request.path}"
            )
        if bad_json:
            return self._error(400, "invalid_request_error", "Request body is not valid JSON")
        problem = _validate(body, need_max_tokens=path == "/v1/messages")
        if problem:
            return self._error(400, "invalid_request_error", problem)
        if path == "/v1/messages/count_tokens":
            return web.json_response(
                {"input_tokens": _input_tokens(body)},
                headers={"request-id": _new_id("req_")},
                dumps=_dumps,
            )
        return await self._messages(request, body)

    async def _messages(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        scripted = self._pop()
        if isinstance(scripted, Error):
            extra = {}
            if scripted.retry_after is not None:
                ra = scripted.retry_after
                extra["retry-after"] = str(int(ra)) if float(ra).is_integer() else str(ra)
            return self._error(scripted.status, scripted.type, scripted.message, extra)
        if isinstance(scripted, Hang):
            if not await self._wait_unless_gone(request, scripted.seconds, scripted.release):
                self.disconnects += 1
                return web.Response(status=499)
            scripted = None
        reply = self._resolve(body, scripted)
        message_id = _new_id("msg_")
        if body.get("stream"):
            return await self._stream(request, body, reply, message_id)
        message = self._message_json(body, reply, message_id, final=True)
        self._answer(message["usage"])
        return web.json_response(message, headers={"request-id": _new_id("req_")}, dumps=_dumps)

    def _answer(self, usage: Any) -> int:
        """Note a reply's usage in ``answered``; returns its index there."""
        with self._lock:
            self.answered.append(usage)
            return len(self.answered) - 1

    async def _wait_unless_gone(
        self, request: web.Request, seconds: float, release: threading.Event | None = None
    ) -> bool:
        """Sleep ``seconds``, or until ``release`` is set; return False early if the client
        closed the connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            if request.transport is None or request.transport.is_closing():
                return False
            if release is not None and release.is_set():
                return True
            await asyncio.sleep(min(0.02, remaining))
        return True

    def _cached(self, body: dict[str, Any], total: int) -> tuple[int, int]:
        """(cache reads, cache writes) of a request's prompt, its prefixes written as they go."""
        units = _prompt_units(body)
        marks = [k for k, (_, _, marked) in enumerate(units) if marked]
        if not marks:
            return 0, 0
        keys, chain = [], hashlib.sha256()
        for identity, _, _ in units[: marks[-1] + 1]:
            chain.update(identity.encode())
            keys.append(chain.copy().hexdigest())

        def tokens(k: int) -> int:
            return min(total, count_tokens("\n".join(t for _, t, _ in units[: k + 1] if t)))

        with self._lock:
            hits = [
                k
                for mark in marks
                for k in range(mark, max(-1, mark - CACHE_LOOKBACK_BLOCKS), -1)
                if keys[k] in self._cache
            ]
            for mark in marks:
                if tokens(mark) >= self.cache_min_tokens:
                    self._cache.add(keys[mark])
        read = tokens(max(hits)) if hits else 0
        written = tokens(marks[-1]) if tokens(marks[-1]) >= self.cache_min_tokens else read
        return read, max(0, written - read)

    def _resolve(self, body: dict[str, Any], scripted: Text | ToolUse | None) -> _Reply:
        total = _input_tokens(body)
        read, written = self._cached(body, total)
        input_tokens = total - read - written
        if isinstance(scripted, ToolUse):
            tool = {
                "type": "tool_use",
                "id": scripted.id or _new_id("toolu_"),
                "name": scripted.name,
                "input": scripted.input,
            }
            parts = [scripted.text or "", json.dumps(scripted.input)]
            output = count_tokens("\n".join(p for p in parts if p))
            usage = _usage(input_tokens, output, written, read)
            return _Reply(scripted.text or None, "tool_use", None, usage, tool=tool)

        if scripted is None:
            scripted = Text(_default_text(body["messages"]))
        text, stop_reason, stop_sequence = scripted.text, scripted.stop_reason, None
        hits = [(text.find(s), s) for s in body.get("stop_sequences") or [] if s and s in text]
        if hits:
            cut, stop_sequence = min(hits)
            text, stop_reason = text[:cut], "stop_sequence"
        if count_tokens(text) > body["max_tokens"]:
            text, stop_reason, stop_sequence = _fit(text, body["max_tokens"]), "max_tokens", None
        cache = (
            scripted.cache_creation_input_tokens,
            scripted.cache_read_input_tokens,
            scripted.cache_creation_1h_input_tokens,
        )
        if not any(cache):
            cache = (written, read, 0)
        elif scripted.input_tokens is None:
            input_tokens = total
        usage: Any = _usage(
            input_tokens if scripted.input_tokens is None else scripted.input_tokens,
            count_tokens(text) if scripted.output_tokens is None else scripted.output_tokens,
            *cache,
            scripted.web_search_requests,
        )
        verbatim = scripted.usage is not _UNSET
        if verbatim:
            usage = scripted.usage
        return _Reply(
            text,
            stop_reason,
            stop_sequence,
            usage,
            model=scripted.model,
            verbatim=verbatim,
            cut_after=scripted.cut_after,
        )

    @staticmethod
    def _message_json(
        body: dict[str, Any], reply: _Reply, message_id: str, *, final: bool
    ) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if final:
            if reply.text is not None:
                content.append({"type": "text", "text": reply.text})
            if reply.tool is not None:
                content.append(reply.tool)
        usage = reply.usage
        if isinstance(usage, dict) and not final and not reply.verbatim:
            usage = {k: v for k, v in usage.items() if k != "server_tool_use"}
            usage["output_tokens"] = 1
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": reply.model or body["model"],
            "content": content,
            "stop_reason": reply.stop_reason if final else None,
            "stop_sequence": reply.stop_sequence if final else None,
            "usage": usage,
        }

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: _Reply, message_id: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "request-id": _new_id("req_"),
            }
        )
        await response.prepare(request)
        start = self._message_json(body, reply, message_id, final=False)
        answer = self._answer(start["usage"])
        deltas = 0
        try:
            for pause, event, data in _stream_events(start, reply):
                if event == "content_block_delta":
                    deltas += 1
                    if reply.cut_after is not None and deltas > reply.cut_after:
                        assert request.transport is not None
                        request.transport.abort()  # Anthropic's end breaks off mid-stream
                        return response
                if pause and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                # A closed transport may still swallow writes, so check it explicitly.
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("client went away")
                await response.write(_sse(event, {"type": event, **data}))
                if event == "message_delta":
                    self.answered[answer] = reply.usage
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError) as exc:
            self.disconnects += 1
            if isinstance(exc, asyncio.CancelledError):
                raise
        return response


def _stream_events(
    start: dict[str, Any], reply: _Reply
) -> Iterator[tuple[bool, str, dict[str, Any]]]:
    """SSE events of a streamed reply as ``(pause_before, event_type, payload)``."""
    yield False, "message_start", {"message": start}
    index = 0
    if reply.text is not None:
        block = {"type": "text", "text": ""}
        yield False, "content_block_start", {"index": index, "content_block": block}
        yield False, "ping", {}
        for n, piece in enumerate(_pieces(reply.text)):
            delta = {"type": "text_delta", "text": piece}
            yield n > 0, "content_block_delta", {"index": index, "delta": delta}
        yield False, "content_block_stop", {"index": index}
        index += 1
    if reply.tool is not None:
        block = {**reply.tool, "input": {}}
        yield False, "content_block_start", {"index": index, "content_block": block}
        if index == 0:
            yield False, "ping", {}
        raw = json.dumps(reply.tool["input"])
        step = len(raw) // 3 + 1
        for n in range(0, len(raw), step):
            delta = {"type": "input_json_delta", "partial_json": raw[n : n + step]}
            yield n > 0, "content_block_delta", {"index": index, "delta": delta}
        yield False, "content_block_stop", {"index": index}
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
    # The final totals, as Anthropic's message_delta carries them (the whole hostile value, when
    # a scripted usage replaced them).
    usage = reply.usage
    yield False, "message_delta", {"delta": delta, "usage": usage}
    yield False, "message_stop", {}


def _usage(
    input_tokens: int,
    output_tokens: int,
    creation: int = 0,
    read: int = 0,
    creation_1h: int = 0,
    web_searches: int = 0,
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": creation + creation_1h,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": creation,
            "ephemeral_1h_input_tokens": creation_1h,
        },
    }
    if web_searches:
        usage["server_tool_use"] = {"web_search_requests": web_searches}
    return usage


def main(argv: list[str] | None = None) -> None:
    """Serve a ``FakeAnthropic`` until SIGINT/SIGTERM, printing its URL once listening."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--api-key", default=None, help="require this x-api-key")
    args = parser.parse_args(argv)

    serve_until_signalled(
        FakeAnthropic(
            chunk_delay=args.chunk_delay,
            required_api_key=args.api_key,
            host=args.host,
            port=args.port,
        )
    )


def serve_until_signalled(fake: FakeAnthropic) -> None:
    """Start ``fake``, print ``FAKE_ANTHROPIC_URL=<its address>`` for the process that started
    this one, and serve until SIGINT or SIGTERM."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    fake.start()
    print(f"FAKE_ANTHROPIC_URL={fake.base_url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
