"""Shared fixtures: users and API keys, the fake Anthropic server, and service markers.

Tests marked ``postgres`` or ``redis`` need that service. In CI (``CI`` set) a missing service
fails the test; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import sys
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from django.db import connection
from rest_framework.test import APIClient

from tests.fakes.anthropic import FakeAnthropic
from tests.polling import eventually

PLATFORM_KEY = "sk-ant-test-platform-key-never-in-a-sandbox"


def _redis_reachable() -> str | None:
    url = os.environ.get("REDIS_URL")
    if not url:
        return "REDIS_URL is not set"
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 6379), timeout=1):
            return None
    except OSError as exc:
        return f"Redis at {url} is unreachable: {exc}"


def _missing_service(item: pytest.Item) -> str | None:
    if item.get_closest_marker("postgres") and connection.vendor != "postgresql":
        return "needs PostgreSQL: set DATABASE_URL=postgres://…"
    if item.get_closest_marker("redis"):
        return _redis_reachable()
    return None


@pytest.fixture(autouse=True)
def _require_services(request: pytest.FixtureRequest) -> None:
    reason = _missing_service(request.node)
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this service: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _price_table(request: pytest.FixtureRequest) -> None:
    """Transactional tests flush every table, the seeded price table too: seed it again. No
    test sees prices a process cached in an earlier one."""
    from console.services import price_cache_clear

    price_cache_clear()
    marker = request.node.get_closest_marker("django_db")
    if not (marker and marker.kwargs.get("transaction")):
        return
    from django.apps import apps

    seed = importlib.import_module(
        "console.migrations.0009_price_cache_lifetimes_and_web_search"
    ).seed
    request.getfixturevalue("transactional_db")
    seed(apps, None)


@pytest.fixture
def prices_from():
    """``prices_from(day)``: the seeded prices in force from ``day`` too. The ledger prices every
    row and refuses a model without a price, so rows written before the seeded date need it."""
    from console.models import ModelPrice

    def copy(day) -> None:
        priced = set(
            ModelPrice.objects.filter(effective_from__lte=day).values_list("model", flat=True)
        )
        for price in ModelPrice.objects.order_by("effective_from"):
            if price.model not in priced:  # its earliest price
                price.pk, price.effective_from = None, day
                price.save()
                priced.add(price.model)

    return copy


@pytest.fixture(autouse=True)
def _sandbox_host(request: pytest.FixtureRequest, settings) -> None:
    """Tests that use the database run with this machine registered as a sandbox host, as a
    worker registers it at start."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    request.getfixturevalue("transactional_db" if marker.kwargs.get("transaction") else "db")
    from agents.services import host_register

    host_register(
        name=settings.SANDBOX_HOST_NAME,
        backend=settings.SANDBOX_BACKEND,
        capacity_vcpus=64,
        capacity_memory_mib=64 * 1024,
    )


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def asgi_server(transactional_db) -> Iterator[str]:
    """The console's ASGI application served on loopback from a thread; yields its base URL.

    Unlike pytest-django's WSGI ``live_server``, this runs the async views (the gateway's
    streams, the chat proxy) and the WebSockets on a real event loop, as daphne does in
    production.
    """
    import threading

    import uvicorn
    from asgiref.sync import sync_to_async
    from django.db import connections

    from config.asgi import application, request_threads
    from gateway.threads import database_threads
    from gateway.upstream import upstream_close

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        application, log_level="warning", lifespan="off", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the ASGI test server did not start"
        return server.started

    eventually(started, 30, every=0.01, failing="the ASGI test server did not start")
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    upstream_close()
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()
    # No connection may outlive the test database: the gateway's threads', the requests', and
    # the one thread that runs sync code for async code outside a request (asgiref's).
    database_threads.close()
    request_threads.close()
    # On a thread of its own: the caller's thread may be running a loop (Playwright's).
    closer = threading.Thread(target=asyncio.run, args=(sync_to_async(connections.close_all)(),))
    closer.start()
    closer.join()


@pytest.fixture
def live_console(asgi_server: str, settings, fake_anthropic) -> str:
    """The console's base URL, with agents' Claude calls going through its gateway to the fake
    Anthropic."""
    settings.CONSOLE_BASE_URL = asgi_server
    settings.GATEWAY_URL = f"{asgi_server}/gateway"
    return asgi_server


@pytest.fixture(scope="session", autouse=True)
def _embedded_broker() -> Iterator[None]:
    """The broker ``make run`` starts (a private Redis server under ``var/``), for the whole
    session: ``/ready`` checks it, and real workers share it with the tests' process."""
    from django.conf import settings

    from config import broker
    from tests.agents.workers import embedded_broker

    embedded = broker.embedded_url(settings.VAR_DIR)
    if embedded != settings.CELERY_BROKER_URL or broker.server_problem():
        yield  # REDIS_URL (or CELERY_BROKER_URL) names another; or /ready's tests will say why
        return
    with embedded_broker(settings.VAR_DIR):
        yield


@pytest.fixture(scope="session")
def fake_anthropic_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake_anthropic(fake_anthropic_server: FakeAnthropic, settings) -> FakeAnthropic:
    """The fake Anthropic server, with the console's gateway pointed at it."""
    fake_anthropic_server.reset()
    fake_anthropic_server.required_api_key = None
    settings.ANTHROPIC_API_KEY = PLATFORM_KEY
    settings.ANTHROPIC_BASE_URL = fake_anthropic_server.base_url
    settings.ANTHROPIC_MAX_RETRIES = 0
    return fake_anthropic_server


@pytest.fixture(autouse=True)
def _sandbox_state(tmp_path_factory: pytest.TempPathFactory, settings) -> Iterator[None]:
    """Each test gets its own sandbox state folder, and no sandbox outlives it."""
    from agents import sandbox

    settings.SANDBOX_STATE_DIR = tmp_path_factory.mktemp("sandboxes")
    sandbox.driver.cache_clear()
    yield
    drv = sandbox.driver()
    for status in drv.list():
        drv.destroy(status.id)
    sandbox.driver.cache_clear()


@pytest.fixture(autouse=True)
def _limit_counters() -> Iterator[None]:
    """With ``REDIS_URL``, the rate and concurrency counters live in Redis, beyond any test
    database's rollback or flush: each test starts without them (ids are reused)."""
    from console.services.counters import PREFIX, redis_counters

    store = redis_counters()
    if store is not None:
        keys = list(store.client.scan_iter(f"{PREFIX}*", count=1000))
        if keys:
            store.client.delete(*keys)
    yield


@pytest.fixture
def make_user(django_user_model):
    def make(username: str = "alice", **fields):
        return django_user_model.objects.create_user(username=username, password="pw", **fields)

    return make


@pytest.fixture
def user(make_user):
    return make_user("alice")


@pytest.fixture
def outsider(make_user):
    return make_user("mallory")


@pytest.fixture
def operator(make_user):
    return make_user("olivia", is_staff=True)


@pytest.fixture
def api_key():
    """``api_key(user)`` returns a new raw API key for ``user``."""
    from console.services import api_key_create

    def make(owner) -> str:
        return api_key_create(user=owner)[1]

    return make


@pytest.fixture
def client_for(api_key):
    """``client_for(user)``: a DRF test client authenticated with a new API key of ``user``."""

    def make(owner) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key(owner)}")
        return client

    return make


@pytest.fixture
def scoped_client():
    """``scoped_client(user, *scopes)``: a client holding a new key of ``user`` with ``scopes``."""
    from console.services import api_key_create

    def make(owner, *scopes: str) -> APIClient:
        _, raw = api_key_create(user=owner, scopes=scopes or None)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


@pytest.fixture(autouse=True)
def _fresh_channel_layers() -> Iterator[None]:
    """Each test meets channel layers of its own: a receive left waiting by a test that failed
    or timed out (on a loop that is gone) would otherwise refuse every later receive on that
    layer in this process ("Two event loops are trying to receive()")."""
    yield
    from channels.layers import channel_layers

    channel_layers.backends.clear()


_RESULT: dict[str, int] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _RESULT["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process once pytest is done (fixtures torn down, summary printed), with its exit
    status: a thread that a failed or timed-out test left running (an event loop whose task
    ignores its cancel, in a pool the interpreter joins at exit) must not keep ``make test``
    waiting for ever."""
    if "status" in _RESULT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_RESULT["status"])
