"""Billing is total, whatever a caller sends: hostile headers and bodies, generated, against the
real gateway and the fake Anthropic, which reports usage hostile in its turn.

The invariant: each upstream call that returned usage (counted on the fake's side) leaves
exactly one ledger row, charged to the caller at the priced usage; nothing answers 5xx."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agents.models import Agent, Session
from console.models import Budget, ModelPrice, UsageRecord
from console.services import api_key_create
from tests.fakes.anthropic import Text

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet-5-5"
COUNT_MAX = 1_000_000_000
COUNTS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")

printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
hostile_number = st.one_of(
    st.integers(-(10**6), 10**6),
    st.integers(10**9, 10**40),
    st.integers(max_value=-(10**9)),
    st.floats(allow_nan=False),
    st.booleans(),
    printable,
    st.none(),
)
usage_object = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(COUNTS, hostile_number),
        "cache_creation": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "ephemeral_5m_input_tokens": hostile_number,
                    "ephemeral_1h_input_tokens": hostile_number,
                },
            ),
            hostile_number,
        ),
        "server_tool_use": st.one_of(
            st.fixed_dictionaries({"web_search_requests": hostile_number}), hostile_number
        ),
    },
)
usage = st.one_of(usage_object, usage_object, hostile_number, st.lists(st.integers(), max_size=3))

block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, printable),
    st.just({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}),
    st.just({"type": "document", "source": {"type": "file", "file_id": "file_1"}}),
    st.just({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}),
)
tool = st.one_of(
    st.builds(lambda n: {"name": n or "t", "input_schema": {"type": "object"}}, printable),
    st.builds(
        lambda uses: {"type": "web_search_20250305", "name": "web_search", **uses},
        st.one_of(st.just({}), st.builds(lambda n: {"max_uses": n}, hostile_number)),
    ),
    st.just({"type": "web_fetch_20250910", "name": "web_fetch"}),
    st.just({"type": "bash_20250124", "name": "bash"}),
)


def mostly(valid: st.SearchStrategy, hostile: st.SearchStrategy, weight: int = 5):
    """``valid`` ``weight`` times as often as ``hostile``: most calls should reach Anthropic."""
    return st.integers(0, weight).flatmap(lambda pick: hostile if pick == 0 else valid)


model = mostly(
    st.sampled_from([MODEL, MODEL, MODEL, f"{MODEL}-20261101"]),
    st.one_of(
        st.just("claude-unpriced-9"),
        st.just("'; DROP TABLE console_usagerecord; --"),
        st.text(min_size=101, max_size=300),
    ),
)
body = st.fixed_dictionaries(
    {
        "model": model,
        "max_tokens": mostly(st.integers(1, 500), hostile_number),
        "messages": mostly(
            st.builds(
                lambda blocks: [{"role": "user", "content": blocks or "hi"}],
                st.lists(block, max_size=3),
            ),
            st.one_of(st.just([]), hostile_number),
            weight=8,
        ),
    },
    optional={
        "stream": mostly(st.booleans(), hostile_number),
        "tools": st.lists(tool, max_size=3),
        "system": printable,
    },
)
raw_body = mostly(
    body.map(lambda b: json.dumps(b).encode()),
    st.one_of(st.just(b"[" * 5000 + b"]" * 5000), st.binary(max_size=40)),
    weight=10,
)
session_header = st.sampled_from(
    ["none", "none", "none", "own", "own", "own", "theirs", "random", "garbage", "empty"]
)
answer = st.fixed_dictionaries(
    {"usage": usage, "model": st.one_of(st.none(), st.just("surprise-9"), st.just(MODEL))}
)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(0, value), COUNT_MAX)


def expected_counts(reported: object) -> dict[str, int] | None:
    """The counts a reported usage object is charged as (None: not an object), worked out
    here independently of the gateway."""
    if not isinstance(reported, dict):
        return None
    counts = {name: _count(reported.get(name)) for name in COUNTS}
    lifetimes = reported.get("cache_creation")
    lifetimes = lifetimes if isinstance(lifetimes, dict) else {}
    five = _count(lifetimes.get("ephemeral_5m_input_tokens"))
    hour = _count(lifetimes.get("ephemeral_1h_input_tokens"))
    writes = min(max(counts["cache_creation_input_tokens"], five + hour), COUNT_MAX)
    counts["cache_creation_input_tokens"] = writes
    counts["cache_creation_1h_input_tokens"] = writes - min(five, writes)
    tools = reported.get("server_tool_use")
    counts["web_search_requests"] = _count(
        tools.get("web_search_requests") if isinstance(tools, dict) else 0
    )
    return counts


def priced(record: UsageRecord) -> Decimal:
    """The record's cost at the requested model's price, worked out here."""
    price = ModelPrice.objects.filter(model=MODEL).latest("effective_from")
    five = record.cache_creation_input_tokens - record.cache_creation_1h_input_tokens
    tokens = (
        record.input_tokens * price.input_per_mtok
        + record.output_tokens * price.output_per_mtok
        + five * price.cache_write_per_mtok
        + record.cache_creation_1h_input_tokens * price.cache_write_1h_per_mtok
        + record.cache_read_input_tokens * price.cache_read_per_mtok
    ) / Decimal(1_000_000)
    fees = record.web_search_requests * price.web_search_per_1k / Decimal(1000)
    return (tokens + fees).quantize(Decimal("0.00000001"))


@pytest.fixture
def world(asgi_server, fake_anthropic, user, outsider, settings):
    settings.GATEWAY_UNBOUNDED_INPUT_TOKENS = 10_000
    settings.GATEWAY_UNBOUNDED_SERVER_TOOL_USES = 0
    sessions = {}
    for who in (user, outsider):
        agent = Agent.objects.create(
            owner=who, model=MODEL, status="running", sandbox_id=str(uuid.uuid4())
        )
        sessions[who.pk] = str(Session.objects.create(agent=agent, user=who).pk)
    Budget.objects.create(user=user, metric="usd", window="month", limit=Decimal(10**9))
    return {
        "url": f"{asgi_server}/gateway/v1/messages",
        "fake": fake_anthropic,
        "key": api_key_create(user=user)[1],
        "user": user,
        "sessions": {"own": sessions[user.pk], "theirs": sessions[outsider.pk]},
    }


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=raw_body, session=session_header, answer=answer, extra=printable)
def test_every_upstream_call_with_usage_leaves_one_row_at_the_priced_usage(
    world, raw, session, answer, extra
):
    fake = world["fake"]
    fake.reset()
    fake.enqueue(Text("ok", usage=answer["usage"], model=answer["model"]))
    headers = {"x-api-key": world["key"], "content-type": "application/json"}
    value = {
        "none": None,
        "own": world["sessions"]["own"],
        "theirs": world["sessions"]["theirs"],
        "random": str(uuid.uuid4()),
        "garbage": extra.strip() or "-",
        "empty": "",
    }[session]
    if value is not None:
        headers["x-console-session"] = value
    if extra.strip():
        headers["x-request-id"] = headers["anthropic-beta"] = extra.strip()
    before = set(UsageRecord.objects.values_list("pk", flat=True))

    response = httpx.post(world["url"], content=raw, headers=headers, timeout=30)

    assert response.status_code < 500, response.text
    new = list(UsageRecord.objects.exclude(pk__in=before))
    refusal = response.json()["error"]["code"] if response.status_code != 200 else ""
    event(f"{response.status_code} {refusal}: {len(new)} row(s)")
    assert len(new) == len(fake.answered), (response.status_code, response.text[:300])
    if not new:
        return
    (record,) = new
    assert record.user_id == world["user"].pk
    assert record.session_id in (None, uuid.UUID(world["sessions"]["own"]))
    if session != "own":
        assert record.session_id is None
    assert record.model in (MODEL, f"{MODEL}-20261101")
    counts = expected_counts(fake.answered[0])
    if counts is not None and response.headers["content-type"].startswith("text/event-stream"):
        # A stream is charged an output token at least for each delta it carried: one ("ok").
        counts["output_tokens"] = max(counts["output_tokens"], 1)
    if counts is not None:
        assert {name: getattr(record, name) for name in counts} == counts
    else:  # unreadable usage: charged its worst case, at least max_tokens of output
        assert record.output_tokens == json.loads(raw)["max_tokens"]
    assert record.cost_usd == priced(record)
