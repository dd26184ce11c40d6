"""The gateway's Prometheus metrics, through the real gateway and the real ``/metrics``: tokens and
cost by model and by user (with a bounded user label), latency, the overhead the gateway adds,
Anthropic's time to first token, and the budgets nearest their limits; in one process and
summed across processes in multiprocess mode."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from decimal import Decimal
from urllib.parse import quote

import anthropic
import httpx
import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from console.models import Budget
from gateway.metrics import USER_LABELS
from tests.conftest import PLATFORM_KEY
from tests.fakes.anthropic import Error, Hang, Text
from tests.servers import free_port, serving

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet-5-5"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str) -> Samples:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(autouse=True)
def _metrics(settings) -> None:
    settings.METRICS_BEARER_TOKEN = ""
    USER_LABELS.clear()


@pytest.fixture
def console(asgi_server, fake_anthropic) -> str:
    return asgi_server


def client(console: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{console}/gateway", api_key=key, max_retries=0)


def ask(sdk: anthropic.Anthropic, text: str = "How are you?", **extra):
    return sdk.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": text}], **extra
    )


def ask_streamed(
    sdk: anthropic.Anthropic, text: str = "Tell me a story"
) -> anthropic.types.Message:
    with sdk.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": text}]
    ) as stream:
        return stream.get_final_message()


# --- Tokens and cost -----------------------------------------------------------------------------


def test_a_call_counts_its_tokens_and_cost_by_model_and_by_user(
    console, user, api_key, fake_anthropic
):
    fake_anthropic.enqueue(
        Text(
            "cached",
            input_tokens=10,
            output_tokens=5,
            cache_creation_input_tokens=1000,
            cache_read_input_tokens=2000,
        )
    )
    before = scrape(console)
    ask(client(console, api_key(user)))
    after = scrape(console)

    for kind, amount in (
        ("input", 10),
        ("output", 5),
        ("cache_creation_input", 1000),
        ("cache_read_input", 2000),
    ):
        assert grew(before, after, "console_gateway_tokens_total", model=MODEL, type=kind) == amount
        assert (
            grew(before, after, "console_gateway_user_tokens_total", user="alice", type=kind)
            == amount
        )
    cost = float(Decimal("0.00277"))  # (10 * 2 + 5 * 10 + 1000 * 2.50 + 2000 * 0.10) / 1e6
    assert grew(before, after, "console_gateway_cost_usd_total", model=MODEL) == pytest.approx(cost)
    assert grew(
        before, after, "console_gateway_user_cost_usd_total", user="alice"
    ) == pytest.approx(cost)


def test_users_past_the_label_limit_share_one_label_and_the_sums_stay_exact(
    console, user, outsider, make_user, api_key, settings
):
    settings.METRICS_USER_LABELS = 1
    bob = make_user("bob")
    before = scrape(console)
    for who in (user, outsider, bob, user):
        ask(client(console, api_key(who)))
    after = scrape(console)

    def calls_of(label: str) -> float:
        return grew(before, after, "console_gateway_user_tokens_total", user=label, type="input")

    # alice was seen first and keeps her name; mallory and bob are counted as one.
    assert calls_of("alice") > 0 and calls_of("(other)") > 0
    assert calls_of("mallory") == calls_of("bob") == 0

    def grown(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grown("console_gateway_user_cost_usd_total") == pytest.approx(
        grown("console_gateway_cost_usd_total")
    )
    assert grown("console_gateway_user_tokens_total", type="output") == grown(
        "console_gateway_tokens_total", type="output"
    )


def test_a_failed_call_counts_no_tokens_and_adds_no_series_for_its_model(
    console, user, api_key, fake_anthropic
):
    unknown = f"claude-nonexistent-{uuid.uuid4().hex[:8]}"
    sdk = client(console, api_key(user))
    with pytest.raises(anthropic.BadRequestError):  # refused by the gateway: it has no price
        sdk.messages.create(
            model=unknown, max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert not fake_anthropic.requests
    assert unknown not in httpx.get(f"{console}/metrics").text


# --- Latency -------------------------------------------------------------------------------------


def test_plain_and_streamed_calls_are_timed_with_the_overhead_and_the_time_to_first_token(
    console, user, api_key, fake_anthropic
):
    sdk = client(console, api_key(user))
    fake_anthropic.enqueue(Hang(0.3), Hang(0.3))  # Anthropic thinks 0.3 s before answering
    before = scrape(console)
    ask(sdk)
    ask_streamed(sdk)
    after = scrape(console)

    for stream in ("false", "true"):
        labels = {"stream": stream, "status": "2xx"}
        assert grew(before, after, "console_gateway_request_duration_seconds_count", **labels) == 1
        duration = grew(before, after, "console_gateway_request_duration_seconds_sum", **labels)
        assert duration >= 0.3
        assert grew(before, after, "console_gateway_overhead_seconds_count", stream=stream) == 1
        overhead = grew(before, after, "console_gateway_overhead_seconds_sum", stream=stream)
        assert 0 < overhead < duration - 0.25  # the wait on Anthropic is not the gateway's
    assert grew(before, after, "console_gateway_upstream_ttft_seconds_count", model=MODEL) == 1
    ttft = grew(before, after, "console_gateway_upstream_ttft_seconds_sum", model=MODEL)
    assert (
        0.3
        <= ttft
        < grew(
            before,
            after,
            "console_gateway_request_duration_seconds_sum",
            stream="true",
            status="2xx",
        )
    )


@pytest.mark.parametrize(
    ("error", "status"),
    [(Error(429, "rate_limit_error"), "4xx"), (Error(529, "overloaded_error"), "5xx")],
)
@pytest.mark.parametrize("streamed", [False, True])
def test_a_refusal_from_anthropic_is_timed_under_its_status_class(
    console, user, api_key, fake_anthropic, error, status, streamed
):
    fake_anthropic.enqueue(error)
    sdk = client(console, api_key(user))
    before = scrape(console)
    with pytest.raises(anthropic.APIStatusError):
        ask_streamed(sdk) if streamed else ask(sdk)
    after = scrape(console)
    stream = "true" if streamed else "false"
    assert (
        grew(
            before,
            after,
            "console_gateway_request_duration_seconds_count",
            stream=stream,
            status=status,
        )
        == 1
    )
    assert grew(before, after, "console_gateway_overhead_seconds_count", stream=stream) == 1


def test_the_offline_model_is_timed_but_adds_no_overhead_sample(console, user, api_key, settings):
    settings.ANTHROPIC_API_KEY = ""
    before = scrape(console)
    ask(client(console, api_key(user)))
    after = scrape(console)
    assert (
        grew(
            before,
            after,
            "console_gateway_request_duration_seconds_count",
            stream="false",
            status="2xx",
        )
        == 1
    )
    assert grew(before, after, "console_gateway_overhead_seconds_count", stream="false") == 0


# --- Budgets -------------------------------------------------------------------------------------


def test_the_budgets_nearest_their_limits_are_exported_and_no_more(
    console, user, outsider, make_user, settings
):
    settings.METRICS_BUDGETS = 2
    bob = make_user("bob")
    near = Budget.objects.create(user=user, limit=Decimal("10"), used=Decimal("9"))
    half = Budget.objects.create(
        user=bob,
        metric=Budget.Metric.TOKENS,
        window=Budget.Window.DAY,
        limit=Decimal("1000"),
        used=Decimal("300"),
        reserved=Decimal("200"),
    )
    Budget.objects.create(user=outsider, limit=Decimal("10"), used=Decimal("1"))

    samples = scrape(console)

    exported = {
        dict(labels)["user"]: v
        for (name, labels), v in samples.items()
        if name == "console_budget_remaining"
    }
    assert exported == {"alice": 1.0, "bob": 500.0}
    assert (
        value(
            samples,
            "console_budget_limit",
            user="bob",
            budget=str(half.pk),
            metric="tokens",
            window="day",
        )
        == 1000
    )
    assert (
        value(
            samples,
            "console_budget_remaining",
            user="alice",
            budget=str(near.pk),
            metric="usd",
            window="month",
        )
        == 1.0
    )


# --- Across processes ----------------------------------------------------------------------------


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    login = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{login}@{host}/{db['NAME']}"


@pytest.fixture
def two_processes(tmp_path, fake_anthropic):
    """Two console web processes sharing one PROMETHEUS_MULTIPROC_DIR, as ``make run`` has them."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTEST_CURRENT_TEST", "REDIS_URL"}} | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": _database_url(),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "ANTHROPIC_API_KEY": PLATFORM_KEY,
        "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
        "ANTHROPIC_MAX_RETRIES": "0",
        "METRICS_BEARER_TOKEN": "",
    }
    with contextlib.ExitStack() as stack:
        urls = []
        for _ in range(2):
            port = free_port()
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--lifespan",
                "off",
            ]
            url, log = f"http://127.0.0.1:{port}", tmp_path / f"web-{port}.log"
            stack.enter_context(serving(command, log=log, env=env, url=url, health="/health"))
            urls.append(url)
        yield urls


def test_metrics_from_every_process_add_up_in_multiprocess_mode(two_processes, user, api_key):
    first, second = two_processes
    key = api_key(user)
    ask(client(first, key))
    ask_streamed(client(second, key))
    ask(client(second, key))

    for url in (first, second):  # either process answers for all of them
        samples = scrape(url)
        assert total(samples, "console_gateway_request_duration_seconds_count") == 3
        assert (
            value(
                samples,
                "console_gateway_request_duration_seconds_count",
                stream="true",
                status="2xx",
            )
            == 1
        )
        assert total(samples, "console_gateway_overhead_seconds_count") == 3
        assert value(samples, "console_gateway_upstream_ttft_seconds_count", model=MODEL) == 1
        assert total(samples, "console_gateway_user_cost_usd_total", user="alice") == pytest.approx(
            total(samples, "console_gateway_cost_usd_total", model=MODEL)
        )
        assert (
            total(samples, "console_gateway_user_tokens_total", user="alice", type="output")
            == total(samples, "console_gateway_tokens_total", model=MODEL, type="output")
            > 0
        )
