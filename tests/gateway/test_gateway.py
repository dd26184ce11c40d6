"""The gateway speaks Anthropic's Messages API to any Anthropic SDK, and ledgers every call."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import anthropic
import httpx
import pytest

from agents.models import Agent
from agents.sandbox import agent_token_issue
from console.models import Reservation, UsageRecord
from tests.conftest import PLATFORM_KEY
from tests.fakes.anthropic import Error, Hang, Text, count_tokens
from tests.polling import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet-5-5"


@pytest.fixture
def gateway_url(asgi_server, fake_anthropic):
    return f"{asgi_server}/gateway"


@pytest.fixture
def sdk(gateway_url, user, api_key):
    """The real Anthropic SDK, pointed at the console's gateway with alice's API key."""
    return anthropic.Anthropic(base_url=gateway_url, api_key=api_key(user), max_retries=0)


def _ask(client: anthropic.Anthropic, text: str = "How are you?", **extra):
    return client.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": text}], **extra
    )


def test_a_call_through_the_sdk_is_forwarded_with_the_platform_key_and_ledgered(
    sdk, fake_anthropic, user
):
    message = _ask(sdk, system="Answer briefly.")
    assert message.content[0].text == "Echo: How are you?"
    assert fake_anthropic.requests[-1].api_key == PLATFORM_KEY
    assert fake_anthropic.requests[-1].body["system"] == "Answer briefly."
    record = UsageRecord.objects.get()
    assert record.user == user
    assert (record.input_tokens, record.output_tokens) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert (
        record.cost_usd
        == (Decimal(record.input_tokens) * 2 + Decimal(record.output_tokens) * 10) / 1_000_000
    )


def test_a_streamed_and_a_plain_call_of_the_same_exchange_cost_the_same(sdk, fake_anthropic):
    plain = _ask(sdk, "Tell me a story")
    with sdk.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Tell me a story"}]
    ) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed_text == plain.content[0].text
    assert final.usage.output_tokens == plain.usage.output_tokens
    first, second = UsageRecord.objects.order_by("created_at")
    assert first.cost_usd == second.cost_usd > 0
    assert (first.input_tokens, first.output_tokens) == (second.input_tokens, second.output_tokens)


def test_cache_tokens_are_priced_at_their_own_rates(sdk, fake_anthropic):
    fake_anthropic.enqueue(
        Text(
            "cached",
            input_tokens=10,
            output_tokens=5,
            cache_creation_input_tokens=1000,
            cache_read_input_tokens=2000,
        )
    )
    _ask(sdk)
    record = UsageRecord.objects.get()
    assert (record.cache_creation_input_tokens, record.cache_read_input_tokens) == (1000, 2000)
    # claude-sonnet-5-5: $2 in, $10 out, $2.50 cache write, $0.10 cache read per million.
    assert record.cost_usd == Decimal("0.00277")  # (20 + 50 + 2500 + 200) / 1e6


def test_tools_and_stop_sequences_pass_through(sdk, fake_anthropic):
    tool = {"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}
    message = _ask(sdk, "one two STOP three", tools=[tool], stop_sequences=["STOP"])
    sent = fake_anthropic.requests[-1].body
    assert sent["tools"] == [tool] and sent["stop_sequences"] == ["STOP"]
    assert message.stop_reason == "stop_sequence"


def test_an_unknown_field_is_forwarded_unchanged(gateway_url, user, api_key, fake_anthropic):
    body = {
        "model": MODEL,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "x"}],
        "some_future_field": {"a": 1},
    }
    response = httpx.post(
        f"{gateway_url}/v1/messages", json=body, headers={"x-api-key": api_key(user)}
    )
    assert response.status_code == 200
    assert fake_anthropic.requests[-1].body["some_future_field"] == {"a": 1}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (
            {"model": MODEL, "max_tokens": "ten", "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        ({"model": MODEL, "max_tokens": 10, "messages": []}, "messages"),
    ],
)
def test_a_malformed_request_is_refused_in_both_error_shapes(
    gateway_url, user, api_key, fake_anthropic, body, field
):
    response = httpx.post(
        f"{gateway_url}/v1/messages", json=body, headers={"x-api-key": api_key(user)}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"  # what Anthropic's SDKs read
    assert error["code"] == "invalid_request" and field in error["details"]
    assert not fake_anthropic.requests


def test_a_body_that_is_not_json_is_refused(gateway_url, user, api_key):
    response = httpx.post(
        f"{gateway_url}/v1/messages", content=b"{nope", headers={"x-api-key": api_key(user)}
    )
    assert response.status_code == 400


def test_a_call_without_credentials_is_refused(gateway_url, fake_anthropic):
    client = anthropic.Anthropic(base_url=gateway_url, api_key="ac_wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        _ask(client)
    assert not fake_anthropic.requests


def test_an_agent_token_bills_the_agents_owner(gateway_url, user, fake_anthropic):
    agent = Agent.objects.create(
        owner=user, model=MODEL, status="running", sandbox_id=str(uuid.uuid4())
    )
    client = anthropic.Anthropic(
        base_url=gateway_url, api_key=agent_token_issue(agent=agent), max_retries=0
    )
    _ask(client)
    record = UsageRecord.objects.get()
    assert (record.user, record.agent_id) == (user, agent.pk)


def test_the_token_of_a_stopped_agent_is_refused(gateway_url, user, fake_anthropic):
    agent = Agent.objects.create(
        owner=user, model=MODEL, status="stopped", sandbox_id=str(uuid.uuid4())
    )
    client = anthropic.Anthropic(
        base_url=gateway_url, api_key=agent_token_issue(agent=agent), max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError):
        _ask(client)


def test_a_forged_agent_token_is_refused(gateway_url, fake_anthropic):
    client = anthropic.Anthropic(
        base_url=gateway_url, api_key=f"agt_{uuid.uuid4()}:forged", max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError):
        _ask(client)


@pytest.mark.parametrize(
    ("status", "error_type", "sdk_error"),
    [
        (429, "rate_limit_error", anthropic.RateLimitError),
        (529, "overloaded_error", anthropic.APIStatusError),
        (400, "invalid_request_error", anthropic.BadRequestError),
    ],
)
def test_anthropics_refusals_pass_through_in_anthropics_shape(
    sdk, fake_anthropic, status, error_type, sdk_error
):
    fake_anthropic.enqueue(Error(status, error_type, "upstream says no"))
    with pytest.raises(sdk_error) as caught:
        _ask(sdk)
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == error_type
    assert caught.value.body["error"]["message"] == "upstream says no"
    assert not UsageRecord.objects.exists()


def test_without_a_key_the_offline_model_streams_a_labelled_reply(sdk, settings, fake_anthropic):
    settings.ANTHROPIC_API_KEY = ""
    with sdk.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Hi there"}]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text.startswith("[offline model] No ANTHROPIC_API_KEY is configured")
    assert not fake_anthropic.requests
    record = UsageRecord.objects.get()
    assert record.model == "offline" and record.output_tokens == len(text.split())


def test_usage_counts_match_anthropics_own_fields(sdk, fake_anthropic):
    message = _ask(sdk, "a b c")
    assert message.usage.input_tokens == count_tokens("a b c")


# --- Retries, the deadline, and callers that go away -------------------------------------------


@pytest.mark.parametrize("status", [429, 529])
def test_a_rate_limited_or_overloaded_anthropic_is_retried(sdk, settings, fake_anthropic, status):
    settings.ANTHROPIC_MAX_RETRIES = 2
    fake_anthropic.enqueue(Error(status, retry_after=0.05), Error(status, retry_after=0.05))
    message = _ask(sdk)
    assert message.content[0].text == "Echo: How are you?"
    assert len(fake_anthropic.requests) == 3
    assert UsageRecord.objects.count() == 1  # the retries cost nothing; the answer is ledgered


def test_retries_stop_after_the_limit_and_the_refusal_passes_through(sdk, settings, fake_anthropic):
    settings.ANTHROPIC_MAX_RETRIES = 1
    fake_anthropic.enqueue(*[Error(529, retry_after=0.05)] * 3)
    with pytest.raises(anthropic.APIStatusError) as caught:
        _ask(sdk)
    assert caught.value.status_code == 529
    assert len(fake_anthropic.requests) == 2
    assert not Reservation.objects.exists()


def test_retries_end_at_the_gateways_deadline(sdk, settings, fake_anthropic):
    settings.ANTHROPIC_MAX_RETRIES = 5
    settings.GATEWAY_DEADLINE_SECONDS = 0.5
    fake_anthropic.enqueue(*[Error(529, retry_after=0.3)] * 6)
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as caught:
        _ask(sdk)
    assert caught.value.status_code == 504
    assert caught.value.body["error"]["type"] == "timeout_error"
    assert time.monotonic() - started < 3
    assert len(fake_anthropic.requests) < 6
    assert not Reservation.objects.exists() and not UsageRecord.objects.exists()


def test_a_slow_anthropic_is_abandoned_at_the_deadline(sdk, settings, fake_anthropic):
    settings.GATEWAY_DEADLINE_SECONDS = 0.5
    fake_anthropic.enqueue(Hang(30))
    with pytest.raises(anthropic.APIStatusError) as caught:
        _ask(sdk, stream=True)
    assert caught.value.status_code == 504
    assert eventually(lambda: fake_anthropic.disconnects == 1)  # the upstream call was closed
    assert not Reservation.objects.exists()


def test_a_caller_that_goes_away_cancels_the_upstream_call(
    gateway_url, user, api_key, fake_anthropic
):
    fake_anthropic.enqueue(Hang(30))
    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway_url}/v1/messages",
            json=body,
            headers={"x-api-key": api_key(user)},
            timeout=httpx.Timeout(5, read=0.5),
        )
    assert eventually(lambda: fake_anthropic.disconnects == 1)
    assert eventually(lambda: not Reservation.objects.exists())
    assert not UsageRecord.objects.exists()


def test_a_caller_that_leaves_mid_stream_cancels_upstream_and_pays_what_was_used(
    gateway_url, user, api_key, fake_anthropic
):
    fake_anthropic.chunk_delay = 0.05
    long_reply = " ".join(f"word{i}" for i in range(200))
    fake_anthropic.enqueue(Text(long_reply))
    body = {
        "model": MODEL,
        "max_tokens": 1000,
        "stream": True,
        "messages": [{"role": "user", "content": "talk"}],
    }
    try:
        with httpx.stream(
            "POST",
            f"{gateway_url}/v1/messages",
            json=body,
            headers={"x-api-key": api_key(user)},
            timeout=10,
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if "word5 " in line:
                    break  # the caller goes away after a few words
    finally:
        fake_anthropic.chunk_delay = 0.0
    assert eventually(lambda: fake_anthropic.disconnects == 1)
    assert eventually(lambda: UsageRecord.objects.exists())
    record = UsageRecord.objects.get()
    # Charged the input Anthropic reported, and an output token for each delta that arrived
    # (the fake sends one word, one token, per delta); the rest was never generated.
    assert record.input_tokens == count_tokens("talk")
    assert 6 <= record.output_tokens < count_tokens(long_reply)
    assert not Reservation.objects.exists()
