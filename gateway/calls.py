"""The LLM gateway: Anthropic's Messages API, in front of Anthropic, for agents and integrations.

Callers authenticate with an agent's short-lived token or a user's API key; the gateway forwards
with the platform key (or the agent owner's own key), and writes every call's usage to the ledger.
Without any key it answers from a clearly labelled offline model, so a fresh console works.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from agents.models import Agent, Session
from agents.sandbox import agent_token_verify
from console.models import ApiKey, Quota, UsageRecord, User
from console.services import (
    MAX_COUNT,
    Admission,
    TokenUsage,
    api_key_authenticate,
    gateway_admit,
    gateway_settle,
    input_bounds,
    ledger_sql,
    user_check_active,
)
from plumbing.crypto import decrypt
from plumbing.errors import BadRequest, ConsoleError, Forbidden, MalformedBody, NotAuthenticated
from wire import jsonbound
from wire.sse import sse_frame

__all__ = [
    "ANSWER_DEPTH",
    "OFFLINE_MODEL",
    "AnthropicKeyRejected",
    "AnthropicUnreachable",
    "GatewayCall",
    "GatewayCaller",
    "StreamUsage",
    "UpstreamError",
    "gateway_authenticate",
    "gateway_begin",
    "gateway_finish",
    "offline_events",
    "offline_message",
    "past_deadline",
    "usage_of",
    "validate_body",
]

OFFLINE_MODEL = "offline"
# Far above any model's output limit; bounds the worst case the gateway reserves.
MAX_TOKENS = 1_000_000
# The longest model name priced (``ModelPrice.model``), and so accepted.
MAX_MODEL_CHARS = 100
# Anthropic's answers are parsed with a looser depth bound than callers' bodies: a tool's input
# may nest, and an answer that cannot be read is charged its worst case.
ANSWER_DEPTH = 256


@dataclass(frozen=True, slots=True)
class GatewayCaller:
    """Who is calling, whom to bill, and which Anthropic key to use ("" means offline)."""

    user_id: int
    agent_id: str | None
    upstream_key: str = field(repr=False)
    api_key: ApiKey | None = field(default=None, repr=False, compare=False)
    own_key: bool = False  # the agent's own Anthropic key (spawned with anthropic_api_key)


@dataclass(slots=True)
class GatewayCall:
    """One admitted call: who makes it, what it reserved, the chat session it belongs to
    (checked), and what it is charged when Anthropic's answer says no readable usage."""

    caller: GatewayCaller
    admission: Admission
    session_id: str | None = None
    unread: TokenUsage = field(default_factory=TokenUsage)


class UpstreamError(ConsoleError):
    """Anthropic refused or failed; its status and error type pass through to the caller."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message, details={"upstream_status": status})
        self.status, self.code, self.error_type = status, error_type, error_type


class AnthropicKeyRejected(UpstreamError):
    """Anthropic refused the key a call was made with (401): the agent's own or the console's."""

    code = "anthropic_key_rejected"

    def __init__(self, caller: GatewayCaller, said: str) -> None:
        if caller.own_key:
            key = "anthropic_api_key"
            message = f"Anthropic refused this agent's own key, {key} (given at spawn): {said}"
            advice = "Spawn the agent again with a valid key, or without one to use the console's"
        else:
            key = "ANTHROPIC_API_KEY"
            message = f"Anthropic refused the console's key, {key}: {said}"
            advice = "An operator must set a valid one"
        super().__init__(502, "authentication_error", f"{message.rstrip('.')}. {advice}.")
        self.code = type(self).code
        self.details = {"upstream_status": 401, "key": key}


class AnthropicUnreachable(UpstreamError):
    """Anthropic could not be reached; ``reason`` says why, in words."""

    code = "anthropic_unreachable"

    def __init__(self, reason: str) -> None:
        super().__init__(502, "api_error", f"Anthropic could not be reached: {reason}")
        self.code = type(self).code


def gateway_authenticate(*, token: str) -> GatewayCaller:
    """The caller of a gateway call: an agent's token, or an API key holding ``write`` (a call
    spends money); ``NotAuthenticated`` or ``Forbidden`` (403, permission_error) otherwise."""
    if not token:
        raise NotAuthenticated("send an agent token or API key in x-api-key or Authorization")
    agent_id = agent_token_verify(token=token)
    if agent_id is None:
        key = api_key_authenticate(raw=token)
        if ApiKey.Scope.WRITE not in key.scopes:
            raise Forbidden(
                "this API key lacks the write scope: gateway calls spend money",
                details={"required_scope": ApiKey.Scope.WRITE.value},
            )
        user_check_active(user=key.user)
        return GatewayCaller(key.user_id, None, settings.ANTHROPIC_API_KEY, key)
    agent = _running_agent(agent_id)
    if agent is None:
        raise NotAuthenticated("this agent token belongs to an agent that no longer runs")
    user_check_active(user=agent.owner)
    own_key = decrypt(agent.anthropic_key_encrypted) if agent.anthropic_key_encrypted else ""
    return GatewayCaller(
        agent.owner_id,
        str(agent.pk),
        own_key or settings.ANTHROPIC_API_KEY,
        own_key=bool(own_key),
    )


_AGENT = ledger_sql.fields(Agent, ("id", "owner_id", "anthropic_key_encrypted"))


def _running_agent(agent_id: str) -> Agent | None:
    """The agent, unless it has stopped, with its owner and their quota: what
    ``Agent.objects.select_related("owner__quota").only("anthropic_key_encrypted", "owner__id",
    "owner__quota__is_suspended", …)`` gives. Every call of an agent asks, so this is SQL
    (see ``ledger_sql``): 0.06 ms, where the ORM took 0.64 ms, with a second query for the
    quota."""
    a, q = ledger_sql.names(Agent), ledger_sql.names(Quota)
    statuses = Agent.ACTIVE_STATUSES
    row = ledger_sql.fetchone(
        f"SELECT {ledger_sql.columns(Agent, _AGENT, qualified=True)}, "
        f"{ledger_sql.columns(Quota, ledger_sql.QUOTA_LIMITS, qualified=True)} "
        f"FROM {a.table} LEFT OUTER JOIN {q.table} "
        f"ON {q.table}.{q.user_id} = {a.table}.{a.owner_id} "
        f"WHERE {a.table}.{a.id} = %s AND {a.table}.{a.deleted_at} IS NULL "
        f"AND {a.table}.{a.status} IN ({', '.join(['%s'] * len(statuses))})",
        [
            ledger_sql.bind(Agent, "id", agent_id),
            *(ledger_sql.bind(Agent, "status", status) for status in statuses),
        ],
    )
    if row is None:
        return None
    quota_starts = len(_AGENT)
    agent = ledger_sql.load(Agent, _AGENT, row[:quota_starts])
    owner = ledger_sql.load(User, ("id",), [agent.owner_id])
    Agent._meta.get_field("owner").set_cached_value(agent, owner)
    quota = None
    if row[quota_starts] is not None:
        quota = ledger_sql.load(Quota, ledger_sql.QUOTA_LIMITS, row[quota_starts:])
    ledger_sql.with_quota(owner, quota)
    return agent


def gateway_begin(
    *, token: str, body: dict[str, Any], raw: bytes, session_id: str | None
) -> GatewayCall:
    """Authenticate the caller, check the session they name, and admit the call against
    their limits, reserving its worst case."""
    caller = gateway_authenticate(token=token)
    session = _session_check(caller, session_id)
    admission = gateway_admit(
        user_id=caller.user_id,
        api_key=caller.api_key,
        model=body["model"],
        body_bytes=len(raw),
        max_tokens=body["max_tokens"],
        inputs=input_bounds(body, raw),
    )
    worst = admission.worst
    # An answer whose usage cannot be read is charged the input it reserved, and max_tokens.
    output = body["max_tokens"]
    unread = TokenUsage(
        input_tokens=(worst.tokens - output) if worst is not None else len(raw),
        output_tokens=output,
    )
    return GatewayCall(caller, admission, session, unread)


_SESSION_REFUSED = (
    "x-console-session: no session of yours has this id (send the id of one of your sessions, "
    "or leave the header out)"
)


def _session_check(caller: GatewayCaller, raw: str | None) -> str | None:
    """The session the caller names, when it is theirs (for an agent's token: that agent's),
    as a canonical id; ``BadRequest`` otherwise, before anything is spent."""
    if raw is None or not raw.strip():
        return None
    try:
        session_id = uuid.UUID(raw.strip()[:64])
    except ValueError:
        details = {"x-console-session": ["Not a session id."]}
        raise BadRequest(_SESSION_REFUSED, details=details) from None
    s, a = ledger_sql.names(Session), ledger_sql.names(Agent)
    row = ledger_sql.fetchone(
        f"SELECT {s.table}.{s.user_id}, {s.table}.{s.agent_id}, {a.table}.{a.owner_id} "
        f"FROM {s.table} INNER JOIN {a.table} ON {a.table}.{a.id} = {s.table}.{s.agent_id} "
        f"WHERE {s.table}.{s.id} = %s",
        [ledger_sql.bind(Session, "id", session_id)],
    )
    if row is not None:
        user_id, agent_id, owner_id = row[0], str(uuid.UUID(str(row[1]))), row[2]
        if caller.agent_id is not None:
            allowed = agent_id == caller.agent_id
        else:
            allowed = caller.user_id in (user_id, owner_id)
        if allowed:
            return str(session_id)
    raise BadRequest(_SESSION_REFUSED, details={"x-console-session": ["No such session."]})


def validate_body(raw: bytes) -> dict[str, Any]:
    try:
        body = jsonbound.loads(raw)
    except jsonbound.TooDeep as exc:
        raise MalformedBody(f"the body is not accepted: {exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise MalformedBody("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    problems: dict[str, list[str]] = {}
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems["model"] = ["A model name is required."]
    elif len(body["model"]) > MAX_MODEL_CHARS:
        problems["model"] = [f"At most {MAX_MODEL_CHARS} characters (no model is named longer)."]
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        problems["max_tokens"] = ["A positive integer is required."]
    elif max_tokens > MAX_TOKENS:
        problems["max_tokens"] = [f"At most {MAX_TOKENS:,} (no model writes more)."]
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        problems["messages"] = ["A non-empty list of messages is required."]
    if "stream" in body and not isinstance(body["stream"], bool):
        problems["stream"] = ["true or false."]
    if problems:
        field_name, messages = next(iter(problems.items()))
        raise BadRequest(f"{field_name}: {messages[0]}", details=problems)
    return body


def past_deadline() -> UpstreamError:
    return UpstreamError(
        504,
        "timeout_error",
        f"Anthropic did not answer within the gateway's deadline of "
        f"{settings.GATEWAY_DEADLINE_SECONDS:g} s, retries included",
    )


def usage_of(raw: object) -> TokenUsage:
    """What Anthropic's ``usage`` object reports (see ``_usage``)."""
    return _usage(_usage_fields(raw))


_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def _usage_fields(raw: object) -> dict[str, int]:
    """The counts a ``usage`` object holds, flat: whole numbers only, and only those present,
    so that a later object (a stream's ``message_delta``) updates what an earlier one said."""
    counts = _ints(raw)
    if not isinstance(raw, dict):
        return counts
    fields = {name: counts[name] for name in _COUNTS if name in counts}
    fields |= _ints(raw.get("cache_creation"))  # ephemeral_5m_/ephemeral_1h_input_tokens
    searches = _ints(raw.get("server_tool_use")).get("web_search_requests")
    if searches is not None:
        fields["web_search_requests"] = searches
    return fields


def _usage(fields: dict[str, int]) -> TokenUsage:
    """The usage of flat counts: what is missing counts nothing, and cache writes that are not
    attributed to the 5-minute cache are charged at the dearer 1-hour rate."""
    five_minutes = max(0, fields.get("ephemeral_5m_input_tokens", 0))
    one_hour = max(0, fields.get("ephemeral_1h_input_tokens", 0))
    writes = max(fields.get("cache_creation_input_tokens", 0), five_minutes + one_hour)
    writes = min(writes, MAX_COUNT)
    return TokenUsage(
        input_tokens=fields.get("input_tokens", 0),
        output_tokens=fields.get("output_tokens", 0),
        cache_creation_input_tokens=writes,
        cache_read_input_tokens=fields.get("cache_read_input_tokens", 0),
        cache_creation_1h_input_tokens=writes - min(five_minutes, writes),
        web_search_requests=fields.get("web_search_requests", 0),
    )


def gateway_finish(
    *, call: GatewayCall, model: str, usage: TokenUsage | None, request_id: str = ""
) -> UsageRecord | None:
    """Settle the call to what it used (``None``: it returned no usage): the ledger, the
    budgets. A call that returned usage always leaves its row (see ``gateway_settle``)."""
    return gateway_settle(
        admission=call.admission,
        model=model,
        usage=usage,
        agent_id=call.caller.agent_id,
        session_id=call.session_id,
        request_id=request_id[:100],
    )


class StreamUsage:
    """Follows an answer for what the call used: a stream's SSE lines (Anthropic's totals, in
    ``message_start``, final in ``message_delta``, and the deltas, for a stream cut short), or
    a whole message. An answer that began but whose usage cannot be read is charged
    ``unread``."""

    def __init__(self, model: str, unread: TokenUsage | None = None) -> None:
        self.model = model
        self.unread = unread or TokenUsage()
        self.raw: dict[str, int] = {}
        self.answered = False  # a message began: Anthropic bills it
        self.readable = False  # and its usage was an object
        self.deltas = 0
        self._event = ""

    def line(self, line: str) -> str:
        """Take one line; returns the event's type when a data line completes one."""
        if not line:  # an event ends: the next one names its own type
            self._event = ""
            return ""
        if line.startswith("event:"):
            self._event = line[6:].strip()
            return ""
        if not line.startswith("data:"):
            return ""
        try:
            data = jsonbound.loads(line[5:], max_depth=ANSWER_DEPTH)
        except ValueError:  # a frame the gateway does not understand still goes through
            if self._event in ("message_start", "message_delta"):
                self.answered = True
            return ""
        event = self._event or (data.get("type", "") if isinstance(data, dict) else "")
        if not isinstance(data, dict) or not isinstance(event, str):
            return ""
        if event == "message_start":
            self.answered = True
            message = data.get("message")
            if isinstance(message, dict):
                self._model(message.get("model"))
                self._take(message.get("usage"))
        elif event == "content_block_delta":
            self.deltas += 1
        elif event == "message_delta":
            self.answered = True
            self._take(data.get("usage"))
        return event

    def whole(self, content: bytes | dict[str, Any]) -> None:
        """Take a whole (non-streamed) message, as bytes or parsed: its model and usage."""
        self.answered = True
        if isinstance(content, bytes):
            try:
                content = jsonbound.loads(content, max_depth=ANSWER_DEPTH)
            except ValueError:
                return
        if isinstance(content, dict):
            self._model(content.get("model"))
            self._take(content.get("usage"))

    def _model(self, name: object) -> None:
        if isinstance(name, str) and name:
            self.model = name

    def _take(self, usage: object) -> None:
        if isinstance(usage, dict):
            self.readable = True
            self.raw.update(_usage_fields(usage))

    def used(self) -> TokenUsage | None:
        """What the call used: None when no answer began; ``unread`` when its usage could not
        be read; else Anthropic's totals (final, unless the stream was cut short), with at least
        one output token per delta received (each carries one or more)."""
        if not self.answered:
            return None
        if not self.readable:
            return self.unread
        usage = _usage(self.raw)
        if usage.output_tokens >= self.deltas:
            return usage
        output = self.deltas
        return TokenUsage(**(usage.as_dict() | {"output_tokens": output}))


def _ints(raw: object) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {}
    return {
        k: v
        for k, v in raw.items()
        if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
    }


# --- The offline model -----------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def offline_message(body: dict[str, Any]) -> dict[str, Any]:
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


def offline_events(message: dict[str, Any]) -> list[bytes]:
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
