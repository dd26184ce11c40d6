"""The LLM gateway: Anthropic's Messages API, in front of Anthropic, for agents and integrations.

Callers authenticate with an agent's short-lived token or a user's API key; the gateway forwards
with the platform key (or the agent owner's own key), and writes every call's usage to the ledger.
Without any key it answers from a clearly labelled offline model, so a fresh console works.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
from anthropic.resources.messages import AsyncMessages
from asgiref.sync import sync_to_async
from django.conf import settings

from agents.models import Agent
from agents.runtime.sse import sse_frame
from agents.sandbox import agent_token_verify
from console.crypto import decrypt
from console.errors import BadRequest, ConsoleError, NotAuthenticated
from console.metrics import GatewayTimer, gateway_count
from console.models import ApiKey
from console.services import (
    Admission,
    TokenUsage,
    api_key_authenticate,
    gateway_admit,
    gateway_settle,
    user_check_active,
)

__all__ = [
    "OFFLINE_MODEL",
    "GatewayCall",
    "GatewayCaller",
    "UpstreamError",
    "UpstreamStream",
    "gateway_authenticate",
    "gateway_begin",
    "gateway_create",
    "gateway_open_stream",
    "validate_body",
]

OFFLINE_MODEL = "offline"
_SDK_PARAMS = frozenset(inspect.signature(AsyncMessages.create).parameters) - {
    "self",
    "extra_headers",
    "extra_query",
    "extra_body",
    "timeout",
}


@dataclass(frozen=True, slots=True)
class GatewayCaller:
    """Who is calling, whom to bill, and which Anthropic key to use ("" means offline)."""

    user_id: int
    agent_id: str | None
    upstream_key: str = field(repr=False)
    api_key: ApiKey | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class GatewayCall:
    """One admitted call: who makes it, what it reserved, and the chat session it belongs to."""

    caller: GatewayCaller
    admission: Admission
    session_id: str | None = None


class UpstreamError(ConsoleError):
    """Anthropic refused or failed; its status and error type pass through to the caller."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message, details={"upstream_status": status})
        self.status, self.code, self.error_type = status, error_type, error_type


def gateway_authenticate(*, token: str) -> GatewayCaller:
    if not token:
        raise NotAuthenticated("send an agent token or API key in x-api-key or Authorization")
    agent_id = agent_token_verify(token=token)
    if agent_id is None:
        key = api_key_authenticate(raw=token)
        user_check_active(user=key.user)
        return GatewayCaller(key.user_id, None, settings.ANTHROPIC_API_KEY, key)
    agent = (
        Agent.objects.select_related("owner")
        .filter(pk=agent_id, status__in=Agent.ACTIVE_STATUSES, deleted_at__isnull=True)
        .first()
    )
    if agent is None:
        raise NotAuthenticated("this agent token belongs to an agent that no longer runs")
    user_check_active(user=agent.owner)
    own_key = decrypt(agent.anthropic_key_encrypted) if agent.anthropic_key_encrypted else ""
    return GatewayCaller(agent.owner_id, str(agent.pk), own_key or settings.ANTHROPIC_API_KEY)


def gateway_begin(
    *, token: str, body: dict[str, Any], body_bytes: int, session_id: str | None
) -> GatewayCall:
    """Authenticate the caller and admit the call against their limits, reserving its worst
    case; one trip to the database for both."""
    caller = gateway_authenticate(token=token)
    admission = gateway_admit(
        user_id=caller.user_id,
        api_key=caller.api_key,
        model=body["model"],
        body_bytes=body_bytes,
        max_tokens=body["max_tokens"],
    )
    return GatewayCall(caller, admission, session_id)


def validate_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    problems: dict[str, list[str]] = {}
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems["model"] = ["A model name is required."]
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        problems["max_tokens"] = ["A positive integer is required."]
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        problems["messages"] = ["A non-empty list of messages is required."]
    if problems:
        field_name, messages = next(iter(problems.items()))
        raise BadRequest(f"{field_name}: {messages[0]}", details=problems)
    return body


_pools: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[object, ...], anthropic.AsyncAnthropic]
] = weakref.WeakKeyDictionary()


def _client(caller: GatewayCaller) -> anthropic.AsyncAnthropic:
    """The SDK client for the caller's key. One connection pool per event loop serves every
    key (``with_options`` shares it), so calls skip the TCP and TLS handshakes. The SDK
    retries 408, 409, 429 and 5xx (Anthropic's 529 "overloaded" among them) with exponential
    backoff and jitter, honouring Anthropic's retry-after; ``_deadline`` bounds the whole."""
    options = (
        settings.ANTHROPIC_BASE_URL,
        settings.ANTHROPIC_MAX_RETRIES,
        settings.ANTHROPIC_TIMEOUT_SECONDS,
    )
    clients = _pools.setdefault(asyncio.get_running_loop(), {})
    base = clients.get(options)
    if base is None:
        base_url, max_retries, timeout = options
        base = clients[options] = anthropic.AsyncAnthropic(
            api_key=caller.upstream_key, base_url=base_url, max_retries=max_retries, timeout=timeout
        )
    return (
        base
        if base.api_key == caller.upstream_key
        else base.with_options(api_key=caller.upstream_key)
    )


def _deadline() -> asyncio.Timeout:
    """How long a call may take to answer (its first byte, when streamed), retries included."""
    return asyncio.timeout(settings.GATEWAY_DEADLINE_SECONDS)


def _sdk_arguments(body: dict[str, Any]) -> dict[str, Any]:
    known = {k: v for k, v in body.items() if k in _SDK_PARAMS}
    extra = {k: v for k, v in body.items() if k not in _SDK_PARAMS}
    return known | ({"extra_body": extra} if extra else {})


def _upstream_error(exc: anthropic.APIError) -> UpstreamError:
    if isinstance(exc, anthropic.APIStatusError):
        error = exc.body.get("error", {}) if isinstance(exc.body, dict) else {}
        return UpstreamError(
            exc.status_code, error.get("type", "api_error"), error.get("message", str(exc))
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return UpstreamError(504, "timeout_error", "Anthropic did not answer in time")
    return UpstreamError(502, "api_error", f"Anthropic could not be reached: {exc}")


def _past_deadline() -> UpstreamError:
    return UpstreamError(
        504,
        "timeout_error",
        f"Anthropic did not answer within the gateway's deadline of "
        f"{settings.GATEWAY_DEADLINE_SECONDS:g} s, retries included",
    )


def _usage(raw: dict[str, Any] | None) -> TokenUsage:
    raw = raw or {}
    return TokenUsage(
        input_tokens=int(raw.get("input_tokens") or 0),
        output_tokens=int(raw.get("output_tokens") or 0),
        cache_creation_input_tokens=int(raw.get("cache_creation_input_tokens") or 0),
        cache_read_input_tokens=int(raw.get("cache_read_input_tokens") or 0),
    )


async def _settle(
    call: GatewayCall,
    model: str,
    usage: TokenUsage,
    request_id: str,
    timer: GatewayTimer | None = None,
) -> None:
    """Settle the call to what it used (nothing, when it failed) and count it in the metrics,
    whatever cancels the caller."""

    async def settle_and_count() -> None:
        record = await sync_to_async(gateway_settle)(
            admission=call.admission,
            model=model,
            usage=usage,
            agent_id=call.caller.agent_id,
            session_id=_session_or_none(call.session_id),
            request_id=request_id,
        )
        # A call that used nothing is not counted: its model name, from the request, is
        # unchecked, and would make the model label unbounded.
        if record is not None:
            await gateway_count(
                user_id=call.caller.user_id, model=model, usage=usage, cost=record.cost_usd
            )
        if timer is not None:
            timer.observe(model)

    await asyncio.shield(settle_and_count())


def _session_or_none(session_id: str | None) -> str | None:
    try:
        return str(uuid.UUID(session_id)) if session_id else None
    except ValueError:
        return None


# --- The offline model -----------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _offline_message(body: dict[str, Any]) -> dict[str, Any]:
    last_user = next(
        (m for m in reversed(body["messages"]) if isinstance(m, dict) and m.get("role") == "user"),
        {},
    )
    text = (
        "[offline model] No ANTHROPIC_API_KEY is configured on this console, so this reply "
        f"does not come from Claude. You said: {_text_of(last_user.get('content'))}"
    )
    prompt_words = sum(
        len(_text_of(m.get("content")).split()) for m in body["messages"] if isinstance(m, dict)
    )
    return {
        "id": f"msg_offline_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": OFFLINE_MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": prompt_words,
            "output_tokens": len(text.split()),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _offline_events(message: dict[str, Any]) -> list[bytes]:
    start = message | {
        "content": [],
        "stop_reason": None,
        "usage": message["usage"] | {"output_tokens": 1},
    }
    text = message["content"][0]["text"]
    words = text.split(" ")
    deltas = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    return [
        sse_frame("message_start", {"type": "message_start", "message": start}),
        sse_frame(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        *(
            sse_frame(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": d},
                },
            )
            for d in deltas
        ),
        sse_frame("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse_frame(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        ),
        sse_frame("message_stop", {"type": "message_stop"}),
    ]


# --- Forwarding ------------------------------------------------------------------------------


async def gateway_create(*, call: GatewayCall, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """One non-streamed call: the response message and its request id, with usage ledgered."""
    message: dict[str, Any] = {}
    request_id = ""
    timer = GatewayTimer(stream=False)
    try:
        if not call.caller.upstream_key:
            message = _offline_message(body)
        else:
            client = _client(call.caller)
            try:
                async with timer.waiting(), _deadline():
                    raw = await client.messages.with_raw_response.create(**_sdk_arguments(body))
            except anthropic.APIError as exc:
                raise _upstream_error(exc) from exc
            except TimeoutError as exc:
                raise _past_deadline() from exc
            message = raw.http_response.json()
            request_id = raw.http_response.headers.get("request-id", "")
    finally:
        await _settle(
            call,
            message.get("model") or body["model"],
            _usage(message.get("usage")),
            request_id,
            timer,
        )
    return message, request_id


class UpstreamStream:
    """An open streamed call. Iterate it for the SSE bytes; usage is ledgered when it ends,
    however it ends (the caller may go away mid-stream)."""

    def __init__(self, call: GatewayCall, body: dict[str, Any]):
        self.call, self.caller, self.body = call, call.caller, body
        self.request_id = ""
        self._client: anthropic.AsyncAnthropic | None = None
        self._response: Any = None
        self._model = body["model"]
        self._usage: dict[str, int] = {}
        self._deltas = 0
        self._final = False
        self._timer = GatewayTimer(stream=True)

    async def open(self) -> None:
        if not self.caller.upstream_key:
            self._model = OFFLINE_MODEL
            return
        self._client = _client(self.caller)
        manager = self._client.messages.with_streaming_response.create(
            **_sdk_arguments(self.body | {"stream": True})
        )
        try:
            async with self._timer.waiting(), _deadline():
                self._response = await manager.__aenter__()
        except (anthropic.APIError, TimeoutError) as exc:
            await _settle(self.call, self._model, TokenUsage(), "", self._timer)
            if isinstance(exc, TimeoutError):
                raise _past_deadline() from exc
            raise _upstream_error(exc) from exc
        self.request_id = self._response.headers.get("request-id", "")

    def _observe(self, event: str, data: dict[str, Any]) -> None:
        if event == "message_start":
            self._model = data["message"].get("model") or self._model
            self._usage.update(data["message"].get("usage") or {})
        elif event == "content_block_delta":
            self._deltas += 1
            self._timer.mark_first_token()
        elif event == "message_delta":
            self._final = True
            for key, value in (data.get("usage") or {}).items():
                if isinstance(value, int):
                    self._usage[key] = value

    def _used(self) -> TokenUsage:
        """What the call used: Anthropic's final totals; or, for a stream cut short, its input
        and at least one output token per delta received (each delta carries one or more)."""
        usage = _usage(self._usage)
        if self._final or not self._deltas:
            return usage
        return dataclasses.replace(usage, output_tokens=max(usage.output_tokens, self._deltas))

    async def _upstream_chunks(self) -> AsyncIterator[bytes]:
        if self._response is None:
            message = _offline_message(self.body)
            self._usage = dict(message["usage"])
            for chunk in _offline_events(message):
                yield chunk
            return
        event = ""
        async for line in self._timer.reading(self._response.iter_lines()):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                # A frame the gateway does not understand still goes through unchanged.
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    self._observe(event, json.loads(line[5:]))
            yield (line + "\n").encode()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._upstream_chunks():
                yield chunk
        finally:
            if self._response is not None:
                await self._response.close()
            await _settle(self.call, self._model, self._used(), self.request_id, self._timer)


async def gateway_open_stream(*, call: GatewayCall, body: dict[str, Any]) -> UpstreamStream:
    """Open a streamed call; refusals from Anthropic raise here, before any byte is sent."""
    stream = UpstreamStream(call, body)
    await stream.open()
    return stream
