"""``POST /gateway/v1/messages`` as a plain ASGI app, beside Django's.

Every call pays for what the gateway adds, so it skips Django's request cycle (middleware,
sessions, a fresh database connection per request): its database work runs on a few threads that
keep their connections open, and the request and Anthropic's answer pass through as bytes. A
call is admitted (its worst case reserved) before it is forwarded and settled before its answer
ends, so the caller never sees an answer whose cost is not yet in the ledger. A caller that
goes away cancels the call to Anthropic; what was used until then is still settled.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from django.conf import settings
from django.db import DatabaseError

from gateway.calls import (
    ANSWER_DEPTH,
    AnthropicKeyRejected,
    GatewayCall,
    StreamUsage,
    UpstreamError,
    gateway_begin,
    gateway_finish,
    offline_events,
    offline_message,
    validate_body,
)
from gateway.metrics import GatewayTimer, gateway_count
from gateway.threads import database_threads
from gateway.upstream import forward_headers, upstream_open
from plumbing.errors import (
    ConsoleError,
    DatabaseBusy,
    MethodNotAllowed,
    PayloadTooLarge,
    refusal_body,
)
from wire import jsonbound
from wire.logs import current_request_id, request_id_or_new, using_request_id

__all__ = ["GatewayApp", "read_body"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("console.gateway")

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


# --- Answers -----------------------------------------------------------------------------------


def _header_list(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


async def _answer(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    headers = headers | {"content-length": str(len(body))}
    await send({"type": "http.response.start", "status": status, "headers": _header_list(headers)})
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, exc: ConsoleError, rate: dict[str, str] | None = None) -> None:
    # Anthropic's SDKs read error.type; the console's clients read error.code, message, details.
    body = refusal_body(exc)
    body["type"] = "error"
    body["error"]["type"] = getattr(exc, "error_type", None) or _ANTHROPIC_TYPES.get(
        exc.status, "api_error"
    )
    log.info(
        "gateway refused: %s %s",
        exc.status,
        exc.code,
        extra={"status": exc.status, "code": exc.code},
    )
    headers = (
        {"content-type": "application/json", "x-request-id": current_request_id()}
        | (rate or {})
        | exc.headers()
    )
    await _answer(send, exc.status, headers, json.dumps(body).encode())


def _anthropic_message(content: bytes) -> str:
    """The message of Anthropic's error answer, or a placeholder when it is not readable."""
    try:
        error = jsonbound.loads(content, max_depth=ANSWER_DEPTH)["error"]
        return str(error["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return "(no readable reason given)"


async def read_body(receive: Receive) -> bytes | None:
    """The request body; None when the caller left first. Raises ``PayloadTooLarge``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise PayloadTooLarge(
                f"the request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes"
            )
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _gone(receive: Receive) -> None:
    """Returns when the caller disconnects."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _bearer(headers: dict[str, str]) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip()


# --- The app -----------------------------------------------------------------------------------


class GatewayApp:
    """Anthropic's Messages API, metered: ``POST /gateway/v1/messages``.

    Each call runs under the caller's ``X-Request-ID`` (a runtime sends the console request's
    id on), or a new one: the call's log lines carry it, and its answer returns it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        with using_request_id(request_id_or_new(headers.get("x-request-id"))):
            await self._serve(scope["method"], headers, receive, send)

    async def _serve(
        self, method: str, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        try:
            if method != "POST":
                raise MethodNotAllowed(["POST"])
            raw = await read_body(receive)
            if raw is None:
                return
            body = validate_body(raw)
            call = await database_threads.run(
                gateway_begin,
                token=_bearer(headers),
                body=body,
                raw=raw,
                session_id=headers.get("x-console-session"),
            )
        except ConsoleError as exc:
            await _refuse(send, exc)
            return
        except DatabaseError:
            await _refuse(send, DatabaseBusy("the console's database is busy; try again shortly"))
            return
        forward = asyncio.ensure_future(_Forward(call, body, raw, headers, send).run())
        gone = asyncio.ensure_future(_gone(receive))
        await asyncio.wait({forward, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not forward.done():
            forward.cancel()  # the caller left: stop asking Anthropic
        with contextlib.suppress(asyncio.CancelledError):
            await forward


class _Forward:
    """One admitted call: forwarded, answered, and settled however it ends."""

    def __init__(
        self,
        call: GatewayCall,
        body: dict[str, Any],
        raw: bytes,
        headers: dict[str, str],
        send: Send,
    ) -> None:
        self.call, self.body, self.raw, self.headers, self.send = call, body, raw, headers, send
        self.stream = bool(body.get("stream"))
        self.timer = GatewayTimer(stream=self.stream)
        self.usage = StreamUsage(body["model"], call.unread)
        self.request_id = ""
        self.rate = call.admission.rate.headers() if call.admission.rate is not None else {}
        self._settling: asyncio.Future[None] | None = None

    async def run(self) -> None:
        try:
            if not self.call.caller.upstream_key:
                await self._offline()
            else:
                await self._upstream()
        except UpstreamError as exc:
            self.timer.status = f"{exc.status // 100}xx"
            await self._settle()
            await _refuse(self.send, exc, self.rate)
        finally:
            await self._settle()  # a no-op when settled already; shielded from cancellation

    async def _settle(self) -> None:
        # Once per call, however many paths ask: the first starts it, and all wait for it.
        if self._settling is None:
            self._settling = asyncio.ensure_future(self._settle_once())
        await asyncio.shield(self._settling)

    async def _settle_once(self) -> None:
        used, model = self.usage.used(), self.usage.model
        record = await database_threads.run(
            gateway_finish, call=self.call, model=model, usage=used, request_id=self.request_id
        )
        # Only a ledgered call is counted, under the model it was charged as: always a priced
        # one, so the model label stays bounded.
        if record is not None and used is not None:
            model = record.model
            await gateway_count(
                user_id=self.call.caller.user_id, model=model, usage=used, cost=record.cost_usd
            )
        else:
            model = self.call.admission.model or model[:100]
        self.timer.observe(model)
        log.info(
            "gateway call settled: %s %s",
            model,
            self.timer.status,
            extra={
                "model": model,
                "stream": self.stream,
                "status": self.timer.status,
                "user_id": self.call.caller.user_id,
                "agent_id": self.call.caller.agent_id,
                "input_tokens": used.input_tokens if used is not None else 0,
                "output_tokens": used.output_tokens if used is not None else 0,
                "cost_usd": str(record.cost_usd) if record is not None else "0",
                "duration_ms": round((time.perf_counter() - self.timer.started) * 1000, 2),
                "upstream_request_id": self.request_id,
            },
        )

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"content-type": content_type, "x-request-id": current_request_id()} | self.rate
        if self.request_id:
            headers["request-id"] = self.request_id
        return headers

    async def _upstream(self) -> None:
        forwarded = forward_headers(self.headers, self.call.caller.upstream_key)
        async with self.timer.waiting():
            response = await upstream_open(self.raw, forwarded, stream=self.stream)
        self.request_id = response.headers.get("request-id", "")[:100]
        content_type = response.headers.get("content-type", "application/json")
        events = content_type.startswith("text/event-stream")
        try:
            # What the answer is, not what was asked for, says how to read its usage.
            if events and response.status == 200:
                await self._relay(response)
                return
            content = await response.read()
            if response.status == 401:
                raise AnthropicKeyRejected(self.call.caller, _anthropic_message(content))
            if response.status == 200:
                self.usage.whole(content)
            else:
                self.timer.status = f"{response.status // 100}xx"
            await self._settle()
            await _answer(self.send, response.status, self._headers(content_type), content)
        finally:
            response.release()  # back to the pool when read to the end, else closed

    async def _relay(self, response: aiohttp.ClientResponse) -> None:
        """Pass the stream's bytes on as they come, following its events for the usage."""
        await self._start_stream()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        chunks = response.content.iter_any()
        while True:
            try:
                async with self.timer.waiting():
                    chunk = await anext(chunks, None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Anthropic's stream broke off: the caller's ends too, paying what was used.
                log.warning("gateway: Anthropic's stream broke off: %r", exc)
                self.timer.status = "5xx"
                break
            if chunk is None:
                break
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                if self.usage.line(line.rstrip("\r")) == "content_block_delta":
                    self.timer.mark_first_token()
        await self._settle()
        await self.send({"type": "http.response.body", "body": b""})

    async def _start_stream(self) -> None:
        headers = self._headers("text/event-stream") | {
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        await self.send(
            {"type": "http.response.start", "status": 200, "headers": _header_list(headers)}
        )

    async def _offline(self) -> None:
        message = offline_message(self.body)
        self.usage.whole(message)
        if not self.stream:
            await self._settle()
            await _answer(
                self.send, 200, self._headers("application/json"), json.dumps(message).encode()
            )
            return
        await self._start_stream()
        for frame in offline_events(message):
            await self.send({"type": "http.response.body", "body": frame, "more_body": True})
        await self._settle()
        await self.send({"type": "http.response.body", "body": b""})
