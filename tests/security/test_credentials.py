"""Credentials as an attacker tries them: JWTs that must end (password change, suspension, a
reused refresh token), forged tokens, password guessing, and sockets from foreign origins."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import jwt as pyjwt
import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from agents.models import Agent
from agents.sandbox import agent_token_issue
from console.models import TokenFamily
from console.services import login_attempt_admit, quota_get, users_set_suspended
from plumbing.errors import RateLimited
from tests.console.api.conftest import error_of

pytestmark = pytest.mark.django_db

LOGIN, REFRESH, ME = "/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/quotas/me"


def _login(username: str = "alice", password: str = "pw", **extra) -> dict:
    response = APIClient().post(
        LOGIN, {"username": username, "password": password}, format="json", **extra
    )
    assert response.status_code == 200, response.content
    return response.json()


def _refresh(token: str):
    return APIClient().post(REFRESH, {"refresh": token}, format="json")


def _me(access: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client.get(ME)


# --- JWTs end when they must ------------------------------------------------------------------


def test_a_password_change_ends_access_and_refresh_tokens(user):
    tokens = _login()
    assert _me(tokens["access"]).status_code == 200
    user.set_password("a new one")
    user.save()
    assert _me(tokens["access"]).status_code == 401
    assert _refresh(tokens["refresh"]).status_code == 401
    assert _me(_login(password="a new one")["access"]).status_code == 200


def test_a_suspension_ends_jwts_and_lifting_it_does_not_bring_them_back(user, operator):
    tokens = _login()
    users_set_suspended(user_ids=[user.pk], suspended=True, actor=operator)
    assert _me(tokens["access"]).status_code == 401
    assert _refresh(tokens["refresh"]).status_code == 401
    users_set_suspended(user_ids=[user.pk], suspended=False, actor=operator)
    assert _me(tokens["access"]).status_code == 401
    assert _refresh(tokens["refresh"]).status_code == 401


def test_a_suspension_through_the_api_ends_jwts_too(user, operator, scoped_client):
    tokens = _login()
    admin = scoped_client(operator, "read", "write", "admin")
    patched = admin.patch(f"/api/v1/quotas/{user.pk}", {"is_suspended": True}, format="json")
    assert patched.status_code == 200
    admin.patch(f"/api/v1/quotas/{user.pk}", {"is_suspended": False}, format="json")
    assert _me(tokens["access"]).status_code == 401


def test_a_suspension_set_anywhere_ends_the_jwts_it_meets(user):
    tokens = _login()
    quota = quota_get(user=user)
    quota.is_suspended = True  # as the admin's quota form saves it
    quota.save()
    assert _me(tokens["access"]).status_code == 401
    quota.is_suspended = False
    quota.save()
    assert _me(tokens["access"]).status_code == 401
    assert _refresh(tokens["refresh"]).status_code == 401


def test_a_suspended_user_cannot_sign_in(user, operator):
    users_set_suspended(user_ids=[user.pk], suspended=True, actor=operator)
    response = APIClient().post(LOGIN, {"username": "alice", "password": "pw"}, format="json")
    assert response.status_code == 403
    assert error_of(response)["code"] == "user_suspended"


def test_a_refresh_token_rotates_and_works_once(user):
    first = _login()
    second = _refresh(first["refresh"])
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh"] != first["refresh"]
    assert _me(rotated["access"]).status_code == 200
    third = _refresh(rotated["refresh"])
    assert third.status_code == 200


def test_a_reused_refresh_token_ends_its_whole_family_and_only_it(user):
    stolen = _login()
    other_sign_in = _login()
    owner = _refresh(stolen["refresh"]).json()  # the owner rotates on
    replay = _refresh(stolen["refresh"])  # the thief replays the old one
    assert replay.status_code == 401
    assert "{" not in error_of(replay)["message"]
    assert _refresh(owner["refresh"]).status_code == 401  # every descendant is dead
    assert _me(owner["access"]).status_code == 401
    assert _me(stolen["access"]).status_code == 401
    assert _me(other_sign_in["access"]).status_code == 200  # another sign-in is untouched
    family = TokenFamily.objects.get(revoked_at__isnull=False)
    assert family.revoked_reason == "refresh token reused"


def test_sign_ins_that_can_issue_nothing_more_are_purged_and_the_live_one_kept(user):
    from django.utils import timezone

    from console.services import jwt_families_purge

    live, reused, idle = _login(), _login(), _login()
    _refresh(reused["refresh"])
    assert _refresh(reused["refresh"]).status_code == 401  # revoked
    idle_family = pyjwt.decode(idle["refresh"], options={"verify_signature": False})["fam"]
    TokenFamily.objects.filter(pk=idle_family).update(created_at=timezone.now() - timedelta(days=2))
    assert jwt_families_purge() == 2
    assert TokenFamily.objects.count() == 1
    assert _me(live["access"]).status_code == 200
    assert _refresh(live["refresh"]).status_code == 200
    assert _me(idle["access"]).status_code == 401
    assert _refresh(reused["refresh"]).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_racing_refreshes_of_one_token_leave_at_most_one_winner_and_end_the_family(user):
    refresh = _login()["refresh"]
    answers: list[int] = []

    def exchange() -> None:
        try:
            answers.append(_refresh(refresh).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=exchange) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers)[0] in (200, 401)
    assert answers.count(200) <= 1
    assert TokenFamily.objects.get().revoked_at is not None


def test_a_token_minted_outside_a_sign_in_is_refused(user):
    assert _me(str(AccessToken.for_user(user))).status_code == 401


def test_a_jwt_signed_with_another_key_or_none_is_refused(user):
    claims = {
        **AccessToken(_login()["access"]).payload,
        "exp": 4_000_000_000,
    }
    forged = pyjwt.encode(claims, "another-key-of-at-least-thirty-two-bytes", algorithm="HS256")
    unsigned = pyjwt.encode(claims, None, algorithm="none")
    for token in (forged, unsigned):
        response = _me(token)
        assert response.status_code == 401
        assert error_of(response)["code"] == "not_authenticated"


def test_a_refresh_token_is_not_an_access_token(user):
    assert _me(_login()["refresh"]).status_code == 401


def test_the_tokens_and_keys_of_a_deleted_user_are_refused_not_failed(user, api_key):
    tokens, key = _login(), api_key(user)
    user.delete()
    assert _me(tokens["access"]).status_code == 401
    assert _refresh(tokens["refresh"]).status_code == 401
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get(ME).status_code == 401


def test_an_agent_token_does_not_open_the_rest_api(user):
    agent = Agent.objects.create(owner=user, sandbox_id=str(uuid.uuid4()), status="running")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {agent_token_issue(agent=agent)}")
    for path in (ME, "/api/v1/agents", "/v1/agents/list", f"/api/v1/agents/{agent.pk}"):
        assert client.get(path).status_code == 401, path


# --- Password guessing ------------------------------------------------------------------------


def _attempt(username: str = "alice", password: str = "wrong", **extra):
    return APIClient().post(
        LOGIN, {"username": username, "password": password}, format="json", **extra
    )


def test_sixty_wrong_passwords_end_in_429_with_retry_after(user, settings):
    answers = [_attempt().status_code for _ in range(60)]
    limit = settings.LOGIN_ATTEMPTS_PER_ACCOUNT
    assert answers[:limit] == [401] * limit
    assert set(answers[limit:]) == {429}
    refused = _attempt(password="pw")  # the right password waits too
    assert refused.status_code == 429
    error = error_of(refused)
    assert error["code"] == "rate_limited"
    retry = int(refused["Retry-After"])
    assert 0 < retry <= settings.LOGIN_WINDOW_MINUTES * 60
    assert error["details"]["retry_after"] == retry


def test_the_right_password_clears_an_accounts_failures(user, settings):
    settings.LOGIN_ATTEMPTS_PER_ACCOUNT = 3
    for _ in range(2):
        assert _attempt().status_code == 401
    assert _attempt(password="pw").status_code == 200
    assert [_attempt().status_code for _ in range(4)] == [401, 401, 401, 429]


def test_an_address_that_tries_many_accounts_is_throttled(make_user, settings):
    settings.LOGIN_ATTEMPTS_PER_ADDRESS = 5
    answers = [_attempt(f"user{i}").status_code for i in range(7)]
    assert answers == [401] * 5 + [429] * 2
    other = _attempt("user9", REMOTE_ADDR="198.51.100.7")
    assert other.status_code == 401


def test_a_forged_x_forwarded_for_is_ignored_without_a_proxy(settings):
    settings.LOGIN_ATTEMPTS_PER_ADDRESS = 3
    answers = [
        _attempt(f"user{i}", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code for i in range(5)
    ]
    assert answers == [401] * 3 + [429] * 2


def test_behind_a_proxy_the_address_it_saw_counts_not_what_the_client_wrote(settings):
    settings.TRUSTED_PROXIES = 1
    settings.LOGIN_ATTEMPTS_PER_ADDRESS = 3
    answers = [
        _attempt(
            f"user{i}", HTTP_X_FORWARDED_FOR=f"10.9.9.{i}, 192.0.2.50", REMOTE_ADDR="127.0.0.1"
        ).status_code
        for i in range(5)
    ]
    assert answers == [401] * 3 + [429] * 2
    other_client = _attempt("user9", HTTP_X_FORWARDED_FOR="192.0.2.51", REMOTE_ADDR="127.0.0.1")
    assert other_client.status_code == 401


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_the_login_page_and_the_admin_login_are_throttled(path, user, settings):
    settings.LOGIN_ATTEMPTS_PER_ACCOUNT = 3
    browser = Client()
    form = {"username": "alice", "password": "wrong", "next": "/"}
    assert [browser.post(path, form).status_code for _ in range(3)] == [200] * 3
    refused = browser.post(path, form | {"password": "pw"})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert b"Too many sign-in attempts" in refused.content


def test_the_three_logins_share_one_count(user, settings):
    settings.LOGIN_ATTEMPTS_PER_ACCOUNT = 3
    form = {"username": "alice", "password": "wrong"}
    Client().post("/accounts/login/", form)
    Client().post("/admin/login/", form)
    assert _attempt().status_code == 401
    assert _attempt().status_code == 429


@pytest.mark.django_db(transaction=True)
def test_concurrent_attempts_are_counted_exactly(settings):
    settings.LOGIN_ATTEMPTS_PER_ACCOUNT = 10
    admitted: list[bool] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            login_attempt_admit(username="alice", address="192.0.2.1")
            ok = True
        except RateLimited:
            ok = False
        finally:
            connections.close_all()
        with lock:
            admitted.append(ok)

    threads = [threading.Thread(target=attempt) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (admitted.count(True), admitted.count(False)) == (10, 14)


# --- The socket's origin ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_memory_channel_layer(request, settings):
    # The origin is checked before the consumer runs: these tests open and close many sockets,
    # each on a loop of its own, which a Redis layer's per-loop connections do not need to meet.
    if "socket" in request.node.name:
        settings.CHANNEL_LAYERS = {
            "default": {"BACKEND": "plumbing.layers.SweptInMemoryChannelLayer"}
        }


def _socket_opens(user, headers: list[tuple[bytes, bytes]], scheme: str = "ws") -> bool:
    from config.asgi import application

    browser = Client()
    browser.force_login(user)
    cookie = (b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode())

    async def scenario() -> bool:
        socket = WebsocketCommunicator(application, "/ws/chat/", headers=[*headers, cookie])
        socket.scope["scheme"] = scheme
        connected, _ = await socket.connect(timeout=5)
        if connected:
            await socket.disconnect()
        return connected

    return async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:9999",  # an allowed host, another port
        "https://127.0.0.1:8000",  # the console's host and port, another scheme
        "http://127.0.0.1",  # the default port is another port
        "http://127.0.0.1:8000.evil.example",
        "null",
        "https://evil.example",
    ],
)
def test_a_socket_from_another_origin_is_refused(user, origin, settings):
    settings.CONSOLE_BASE_URL = "http://127.0.0.1:8000"
    headers = [(b"host", b"localhost:8000"), (b"origin", origin.encode())]
    assert not _socket_opens(user, headers)


@pytest.mark.django_db(transaction=True)
def test_a_socket_from_the_pages_own_origin_or_a_trusted_one_opens(user, settings):
    settings.ALLOWED_HOSTS = ["console.example", "localhost"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example:8443"]
    same_page = [(b"host", b"console.example:8080"), (b"origin", b"http://console.example:8080")]
    assert _socket_opens(user, same_page)
    tls = [(b"host", b"console.example"), (b"origin", b"https://console.example")]
    assert _socket_opens(user, tls, scheme="wss")
    assert not _socket_opens(user, tls, scheme="ws")  # the page was served over http
    trusted = [(b"host", b"console.example"), (b"origin", b"https://chat.example:8443")]
    assert _socket_opens(user, trusted)
    foreign_host = [(b"host", b"evil.example"), (b"origin", b"http://evil.example")]
    assert not _socket_opens(user, foreign_host)  # a Host outside ALLOWED_HOSTS


def test_expired_tokens_are_refused(user):
    access = AccessToken(_login()["access"])
    access.set_exp(lifetime=-timedelta(seconds=1))
    assert _me(str(access)).status_code == 401
