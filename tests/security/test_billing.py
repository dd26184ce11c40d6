"""Billing is total, prices fail closed, and budgets hold whatever the body holds: hostile
callers against the real gateway, with the fake Anthropic behind it.

Each test here reproduced a way to call Claude without paying in full (see issue 15)."""

from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal

import httpx
import pytest
from django.db import OperationalError
from django.db.models import Sum
from django.urls import reverse

from agents.models import Agent, Session
from agents.sandbox import agent_token_issue
from console.models import Budget, ModelPrice, Quota, Reservation, UsageRecord
from console.services import api_key_create, ledger, ledger_sql, limits
from tests.fakes.anthropic import Hang, Text
from tests.polling import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet-5-5"  # $2 in, $10 out, $2.50 5-minute and $4 1-hour writes, $0.10 read
MILLION = Decimal(1_000_000)


@pytest.fixture
def console(asgi_server, fake_anthropic) -> str:
    return asgi_server


@pytest.fixture
def key(user) -> str:
    return api_key_create(user=user)[1]


def body_of(text: str = "hi", *, model: str = MODEL, max_tokens: int = 50, **extra) -> dict:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def post(console: str, key: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{console}/gateway/v1/messages",
        content=content,
        headers={"x-api-key": key, "content-type": "application/json", **headers},
        timeout=20,
    )


def anthropic_refusal(response: httpx.Response, status: int = 400) -> dict:
    """The error, after checking it is in both shapes: Anthropic's and the console's."""
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["type"] == "error"
    error = payload["error"]
    assert error["type"] == "invalid_request_error" and error["code"] and error["message"]
    return error


def running_agent(owner) -> Agent:
    return Agent.objects.create(
        owner=owner, model=MODEL, status="running", sandbox_id=str(uuid.uuid4())
    )


# --- The caller's session is checked before the call goes out ----------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_a_session_that_does_not_exist_is_refused_before_the_call(
    console, key, fake_anthropic, stream
):
    response = post(
        console, key, body_of(stream=stream), **{"x-console-session": str(uuid.uuid4())}
    )
    error = anthropic_refusal(response)
    assert "x-console-session" in error["message"]
    assert not fake_anthropic.requests
    assert not Reservation.objects.exists() and not UsageRecord.objects.exists()


@pytest.mark.parametrize("value", ["not-a-uuid", "1 OR 1=1", "x" * 5000])
def test_a_malformed_session_header_is_refused(console, key, fake_anthropic, value):
    anthropic_refusal(post(console, key, body_of(), **{"x-console-session": value}))
    assert not fake_anthropic.requests


def test_another_users_session_is_refused(console, key, outsider, fake_anthropic):
    theirs = Session.objects.create(agent=running_agent(outsider), user=outsider)
    anthropic_refusal(post(console, key, body_of(), **{"x-console-session": str(theirs.pk)}))
    assert not fake_anthropic.requests
    assert not UsageRecord.objects.exists()


def test_an_agent_token_may_not_name_another_agents_session(console, user, fake_anthropic):
    mine, other = running_agent(user), running_agent(user)
    session = Session.objects.create(agent=other, user=user)
    token = agent_token_issue(agent=mine)
    anthropic_refusal(post(console, token, body_of(), **{"x-console-session": str(session.pk)}))
    assert not fake_anthropic.requests
    own = Session.objects.create(agent=mine, user=user)
    assert post(console, token, body_of(), **{"x-console-session": str(own.pk)}).status_code == 200
    record = UsageRecord.objects.get()
    assert (record.user_id, record.agent_id, record.session_id) == (user.pk, mine.pk, own.pk)


@pytest.mark.parametrize("stream", [True, False])
def test_a_session_deleted_during_the_call_still_leaves_its_ledger_row(
    console, user, key, fake_anthropic, stream
):
    session = Session.objects.create(agent=running_agent(user), user=user)
    release = threading.Event()
    fake_anthropic.enqueue(Hang(20, release=release))
    answer: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: answer.append(
            post(console, key, body_of(stream=stream), **{"x-console-session": str(session.pk)})
        )
    )
    caller.start()
    assert eventually(lambda: fake_anthropic.requests)
    session.delete()
    release.set()
    caller.join(20)
    assert answer[0].status_code == 200
    record = UsageRecord.objects.get()
    assert record.user_id == user.pk and record.session_id is None and record.cost_usd > 0
    assert not Reservation.objects.exists()


def test_a_settlement_that_meets_a_database_error_is_retried(
    console, user, key, fake_anthropic, monkeypatch
):
    real, failures = ledger_sql.usage_insert, []

    def flaky(values):
        if len(failures) < 2:
            failures.append(values)
            raise OperationalError("database is locked")
        return real(values)

    monkeypatch.setattr(ledger_sql, "usage_insert", flaky)
    assert post(console, key, body_of()).status_code == 200
    assert len(failures) == 2
    assert UsageRecord.objects.count() == 1 and not Reservation.objects.exists()


def test_a_settlement_the_database_keeps_refusing_is_spooled_and_replayed(
    console, user, key, fake_anthropic, monkeypatch, settings, tmp_path
):
    settings.VAR_DIR = tmp_path
    monkeypatch.setattr(limits, "_SETTLE_BACKOFF", 0.01)
    real = ledger_sql.usage_insert

    def down(values):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(ledger_sql, "usage_insert", down)
    budget = Budget.objects.create(user=user, metric="usd", window="day", limit=Decimal(10))
    fake_anthropic.enqueue(Text("ok", input_tokens=1000, output_tokens=100))
    assert post(console, key, body_of()).status_code == 200
    assert not UsageRecord.objects.exists()
    spooled = (tmp_path / ledger.SPOOL_NAME).read_text().splitlines()
    assert len(spooled) == 1 and json.loads(spooled[0])["usage"]["input_tokens"] == 1000

    monkeypatch.setattr(ledger_sql, "usage_insert", real)
    settings.PRICE_CACHE_SECONDS = 0
    ModelPrice.objects.filter(model=MODEL).delete()  # the spool kept the price it was admitted at
    assert limits.settlements_replay() == 1
    assert limits.settlements_replay() == 0  # once
    record = UsageRecord.objects.get()
    assert (record.user_id, record.cost_usd) == (user.pk, Decimal("0.003"))
    budget.refresh_from_db()
    assert (budget.used, budget.reserved) == (Decimal("0.003"), 0)
    assert not Reservation.objects.exists()
    assert (tmp_path / ledger.SPOOL_NAME).read_text() == ""


# --- Prices fail closed ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["claude-unpriced-9", "x' OR '1'='1", "m" * 10_000])
def test_a_model_without_a_price_is_refused_naming_it_and_the_priced_ones(
    console, key, fake_anthropic, model
):
    error = anthropic_refusal(post(console, key, body_of(model=model)))
    assert error["code"] in {"model_not_priced", "invalid_request"}
    if len(model) <= 100:
        assert model in error["message"]
        assert MODEL in error["details"]["priced_models"]
    assert not fake_anthropic.requests
    assert not UsageRecord.objects.exists()


def test_an_operator_prices_a_model_and_it_is_admitted(console, key, fake_anthropic):
    ModelPrice.objects.create(
        model="claude-new-1",
        effective_from="2026-01-01",
        input_per_mtok=1,
        output_per_mtok=2,
        cache_write_per_mtok=Decimal("1.25"),
        cache_write_1h_per_mtok=2,
        cache_read_per_mtok=Decimal("0.1"),
        web_search_per_1k=10,
    )
    fake_anthropic.enqueue(Text("ok", input_tokens=1000, output_tokens=1000))
    assert post(console, key, body_of(model="claude-new-1")).status_code == 200
    assert UsageRecord.objects.get().cost_usd == Decimal("0.003")


def test_an_operator_prices_a_model_in_the_admin_with_every_rate(
    console, key, make_user, fake_anthropic, client
):
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    form = {
        "model": "claude-admin-1",
        "effective_from": "2026-01-01",
        "input_per_mtok": "1",
        "output_per_mtok": "2",
        "cache_write_per_mtok": "1.25",
        "cache_read_per_mtok": "0.1",
    }
    add = reverse("admin:console_modelprice_add")
    response = client.post(add, form)  # without the 1-hour and web search rates: refused
    assert response.status_code == 200 and not ModelPrice.objects.filter(model="claude-admin-1")
    form |= {"cache_write_1h_per_mtok": "2", "web_search_per_1k": "10"}
    assert client.post(add, form).status_code == 302
    fake_anthropic.enqueue(Text("ok", input_tokens=0, output_tokens=0, web_search_requests=2))
    assert post(console, key, body_of(model="claude-admin-1")).status_code == 200
    assert UsageRecord.objects.get().cost_usd == Decimal("0.02")


def test_a_dated_snapshot_is_priced_as_its_family(console, key, fake_anthropic):
    fake_anthropic.enqueue(Text("ok", input_tokens=1000, output_tokens=100))
    assert post(console, key, body_of(model=f"{MODEL}-20261101")).status_code == 200
    assert UsageRecord.objects.get().cost_usd == Decimal("0.003")  # (2000 + 1000) / 1e6


def test_an_answer_from_an_unpriced_model_is_charged_at_the_requested_models_price(
    console, key, fake_anthropic
):
    fake_anthropic.enqueue(Text("ok", input_tokens=1000, output_tokens=100, model="surprise-9"))
    assert post(console, key, body_of()).status_code == 200
    record = UsageRecord.objects.get()
    assert record.cost_usd == Decimal("0.003")


def test_a_price_removed_during_the_call_still_charges_the_admitted_price(
    console, key, fake_anthropic, settings
):
    settings.PRICE_CACHE_SECONDS = 0
    release = threading.Event()
    fake_anthropic.enqueue(Hang(20, release=release))
    answer: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: answer.append(post(console, key, body_of())))
    caller.start()
    assert eventually(lambda: fake_anthropic.requests)
    ModelPrice.objects.filter(model=MODEL).delete()
    release.set()
    caller.join(20)
    assert answer[0].status_code == 200
    record = UsageRecord.objects.get()
    assert record.model == MODEL and record.cost_usd > 0
    assert not Reservation.objects.exists()


def test_offline_calls_are_recorded_at_no_cost(console, key, settings, fake_anthropic):
    settings.ANTHROPIC_API_KEY = ""
    response = post(console, key, body_of(model=settings.DEFAULT_AGENT_MODEL))
    assert response.status_code == 200 and response.json()["model"] == "offline"
    record = UsageRecord.objects.get()
    assert record.model == "offline" and record.cost_usd == 0 and record.input_tokens > 0
    assert not fake_anthropic.requests


def test_cache_writes_are_priced_by_lifetime_and_web_searches_by_the_thousand(
    console, key, fake_anthropic
):
    fake_anthropic.enqueue(
        Text(
            "ok",
            input_tokens=0,
            output_tokens=0,
            cache_creation_input_tokens=1000,
            cache_creation_1h_input_tokens=1000,
            cache_read_input_tokens=1000,
            web_search_requests=3,
        )
    )
    assert post(console, key, body_of()).status_code == 200
    record = UsageRecord.objects.get()
    assert record.cache_creation_input_tokens == 2000
    assert record.cache_creation_1h_input_tokens == 1000
    assert record.web_search_requests == 3
    # 1000 x $2.50 + 1000 x $4 + 1000 x $0.10 per million, and 3 searches at $10 per thousand.
    assert record.cost_usd == Decimal("0.0066") + Decimal("0.03")


def test_cache_writes_anthropic_does_not_break_down_are_priced_at_the_dearer_rate(
    console, key, fake_anthropic
):
    fake_anthropic.enqueue(
        Text(
            "ok", usage={"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 1000}
        )
    )
    assert post(console, key, body_of()).status_code == 200
    assert UsageRecord.objects.get().cost_usd == Decimal("0.004")


def test_a_stream_anthropic_breaks_off_is_charged_what_was_used(console, key, fake_anthropic):
    reply = " ".join(f"word{i}" for i in range(50))
    fake_anthropic.enqueue(Text(reply, input_tokens=1000, cut_after=10))
    with httpx.stream(
        "POST",
        f"{console}/gateway/v1/messages",
        json=body_of(stream=True, max_tokens=500),
        headers={"x-api-key": key},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        received = "".join(response.iter_text())
    assert "word9 " in received and "word20" not in received
    record = UsageRecord.objects.get()
    assert record.input_tokens == 1000 and 10 <= record.output_tokens < 50
    assert not Reservation.objects.exists()


# --- Hostile usage from upstream -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": -5, "output_tokens": -1000},
        {"input_tokens": 10**30, "output_tokens": 3},
        {"input_tokens": "12", "output_tokens": 1.5, "cache_read_input_tokens": True},
        {"input_tokens": 5, "cache_creation": "lots", "server_tool_use": [1]},
        "not a dict",
        None,
        [1, 2],
    ],
)
def test_any_usage_upstream_reports_leaves_exactly_one_row(
    console, key, fake_anthropic, stream, usage
):
    fake_anthropic.enqueue(Text("ok", usage=usage))
    response = post(console, key, body_of(stream=stream))
    assert response.status_code == 200
    record = UsageRecord.objects.get()
    assert record.cost_usd >= 0
    assert record.input_tokens <= 10**9
    assert not Reservation.objects.exists()


# --- Budgets hold whatever the body holds ------------------------------------------------------

URL_IMAGE = {
    "type": "image",
    "source": {"type": "url", "url": "https://example.com/huge.png"},
}


def unbounded_bodies() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": [URL_IMAGE]}]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "document", "source": {"type": "file", "file_id": "f"}}],
                }
            ]
        },
        {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]},
        {"tools": [{"name": f"t{i}", "input_schema": {}} for i in range(1000)]},
    ]


@pytest.mark.parametrize("extra", unbounded_bodies())
def test_an_unbounded_input_under_a_budget_without_a_cap_is_refused(
    console, user, key, fake_anthropic, settings, extra
):
    settings.GATEWAY_UNBOUNDED_INPUT_TOKENS = 0
    Budget.objects.create(user=user, metric="usd", window="day", limit=Decimal(100))
    error = anthropic_refusal(post(console, key, body_of() | extra))
    assert "GATEWAY_UNBOUNDED_INPUT_TOKENS" in error["message"]
    assert not fake_anthropic.requests


def test_a_web_search_without_max_uses_under_a_budget_without_a_cap_is_refused(
    console, user, key, fake_anthropic, settings
):
    settings.GATEWAY_UNBOUNDED_INPUT_TOKENS = 100_000
    settings.GATEWAY_UNBOUNDED_SERVER_TOOL_USES = 0
    Budget.objects.create(user=user, metric="usd", window="day", limit=Decimal(100))
    tool = {"type": "web_search_20250305", "name": "web_search"}
    error = anthropic_refusal(post(console, key, body_of(tools=[tool])))
    assert "max_uses" in error["message"]
    assert not fake_anthropic.requests


def test_without_a_budget_an_unbounded_input_is_forwarded(console, key, fake_anthropic, settings):
    settings.GATEWAY_UNBOUNDED_INPUT_TOKENS = 0
    response = post(console, key, body_of() | unbounded_bodies()[0])
    assert response.status_code == 200
    assert UsageRecord.objects.count() == 1


def test_a_capped_unbounded_input_reserves_the_cap_and_the_search_fees(
    console, user, key, fake_anthropic, settings
):
    settings.GATEWAY_UNBOUNDED_INPUT_TOKENS = 100_000
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    body = body_of(max_tokens=100, tools=[tool])
    raw = json.dumps(body).encode()
    # The cap at the dearest input rate (1-hour writes, $4), the body's bytes likewise (and the
    # tool prompt's allowance), max_tokens at $10, and five searches at $10 per thousand: it
    # does not fit under $0.45, and it does under $0.50.
    budget = Budget.objects.create(user=user, metric="usd", window="day", limit=Decimal("0.45"))
    release = threading.Event()
    fake_anthropic.enqueue(Hang(20, release=release))
    anthropic_refusal_or_budget = post(console, key, raw)
    assert anthropic_refusal_or_budget.status_code == 429
    budget.limit = Decimal("0.5")
    budget.save()
    answer: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: answer.append(post(console, key, raw)))
    caller.start()
    assert eventually(lambda: fake_anthropic.requests)
    budget.refresh_from_db()
    assert Decimal("0.45") < budget.reserved <= Decimal("0.5")
    release.set()
    caller.join(20)
    assert answer[0].status_code == 200


def test_oversized_usage_never_takes_spend_past_the_budget_by_more_than_one_call(
    console, user, key, fake_anthropic, settings
):
    """The fake reports 80,000 input tokens for a body of a few hundred bytes (as a URL image
    would cost); a $1/day budget admits calls only while their reserved worst case fits."""
    settings.GATEWAY_UNBOUNDED_INPUT_TOKENS = 100_000
    Quota.objects.update_or_create(
        user=user, defaults={"requests_per_minute": None, "concurrent_requests": None}
    )
    Budget.objects.create(user=user, metric="usd", window="day", limit=Decimal(1))
    calls = 24
    fake_anthropic.enqueue(*[Text("ok", input_tokens=80_000, output_tokens=10)] * calls)
    raw = json.dumps(body_of() | unbounded_bodies()[0]).encode()

    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        response = post(console, key, raw)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=one) for _ in range(calls)]
    for thread in threads[:12]:  # half of them at once, the rest one by one
        thread.start()
    for thread in threads[:12]:
        thread.join(30)
    for thread in threads[12:]:
        thread.start()
        thread.join(30)

    admitted = sum(1 for r in answers if r.status_code == 200)
    assert admitted == len(fake_anthropic.answered) == UsageRecord.objects.count() > 0
    assert {r.status_code for r in answers} <= {200, 429}
    spent = UsageRecord.objects.aggregate(total=Sum("cost_usd"))["total"]
    per_call = Decimal(80_000) * 2 / MILLION + Decimal(10) * 10 / MILLION
    assert spent == admitted * per_call  # every call billed in full
    worst = Decimal(100_000 + len(raw)) * 4 / MILLION + Decimal(50) * 10 / MILLION
    assert spent <= Decimal(1) + worst


# --- Bad input -----------------------------------------------------------------------------------


def test_json_nested_a_thousand_deep_is_a_400_in_anthropics_shape(console, key, fake_anthropic):
    deep = b'{"model": "m", "max_tokens": 5, "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    error = anthropic_refusal(post(console, key, deep))
    assert "deep" in error["message"]
    assert not fake_anthropic.requests


@pytest.mark.parametrize("stream", [True, False])
def test_a_deeply_nested_answer_is_still_billed(console, key, fake_anthropic, stream):
    deep: object = "x"
    for _ in range(300):  # deeper than the gateway reads answers; the fake can still write it
        deep = [deep]
    fake_anthropic.enqueue(
        Text("ok", input_tokens=10, output_tokens=5, usage={"input_tokens": 10, "junk": deep})
    )
    response = post(console, key, body_of(stream=stream))
    assert response.status_code == 200
    assert UsageRecord.objects.count() == 1


@pytest.mark.parametrize("stream", ["yes", 1, "false", {}])
def test_a_stream_flag_that_is_not_a_boolean_is_refused(console, key, fake_anthropic, stream):
    anthropic_refusal(post(console, key, body_of(stream=stream)))
    assert not fake_anthropic.requests
