"""API keys: made by a management command, shown once, stored hashed, refused once unusable."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from console.models import ApiKey, Quota, User
from console.services import api_key_authenticate, api_key_create, api_key_revoke
from plumbing.errors import NotAuthenticated

pytestmark = pytest.mark.django_db

LIST = "/v1/agents/list"


def _create_api_key(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def test_create_api_key_prints_a_key_that_authenticates_and_stores_only_its_hash():
    raw, err = _create_api_key("bob", "--create-user")

    key = ApiKey.objects.get()
    assert key.user == User.objects.get(username="bob")
    assert Quota.objects.filter(user=key.user).exists()
    assert raw.startswith(key.prefix + "_")
    assert key.prefix in err
    assert raw not in err  # the key goes to stdout only, so it can be piped
    assert key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    stored = ApiKey.objects.values().get()
    assert not any(raw in str(value) for value in stored.values())
    assert api_key_authenticate(raw=raw) == key


def test_create_api_key_for_an_unknown_user_needs_create_user():
    with pytest.raises(CommandError, match="--create-user"):
        _create_api_key("nobody")
    assert not User.objects.filter(username="nobody").exists()
    assert not ApiKey.objects.exists()


def test_create_api_key_for_an_existing_user_with_expiry(user):
    raw, _ = _create_api_key("alice", "--name", "ci", "--expires-in-days", "7")
    key = api_key_authenticate(raw=raw)
    assert (key.user, key.name) == (user, "ci")
    assert timedelta(days=6) < key.expires_at - timezone.now() <= timedelta(days=7)


def test_create_api_key_with_scopes_repeated_or_as_a_comma_list(operator):
    raw, err = _create_api_key("olivia", "--scope", "read", "--scope", "write,admin")
    key = api_key_authenticate(raw=raw)
    assert sorted(key.scopes) == ["admin", "read", "write"]
    assert "admin, read, write" in err
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/quotas").status_code == 200  # an operator route


def test_create_api_key_with_read_only_cannot_write(user):
    raw, _ = _create_api_key("alice", "--scope", "read")
    assert api_key_authenticate(raw=raw).scopes == ["read"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/keys").status_code == 200
    assert client.post("/api/v1/keys", {}, format="json").status_code == 403


def test_create_api_key_refuses_admin_for_a_non_staff_user_and_says_why(user):
    with pytest.raises(CommandError) as refused:
        _create_api_key("alice", "--scope", "read,write,admin")
    message = str(refused.value)
    assert "admin scope" in message
    assert "alice is not an active staff user" in message
    assert not ApiKey.objects.exists()


def test_create_api_key_refusing_admin_creates_no_user():
    with pytest.raises(CommandError, match="not an active staff user"):
        _create_api_key("newcomer", "--create-user", "--scope", "admin")
    assert not User.objects.filter(username="newcomer").exists()


def test_create_api_key_refuses_an_unknown_scope(user):
    with pytest.raises(CommandError, match="scopes must be some of read, write, admin"):
        _create_api_key("alice", "--scope", "read,root")
    assert not ApiKey.objects.exists()


def test_a_revoked_key_is_refused(user):
    key, raw = api_key_create(user=user)
    api_key_revoke(key=key)
    with pytest.raises(NotAuthenticated):
        api_key_authenticate(raw=raw)


def test_an_expired_key_is_refused(user):
    _, raw = api_key_create(user=user, expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(NotAuthenticated):
        api_key_authenticate(raw=raw)


def test_a_key_of_an_inactive_user_is_refused(make_user):
    _, raw = api_key_create(user=make_user("gone", is_active=False))
    with pytest.raises(NotAuthenticated):
        api_key_authenticate(raw=raw)


def test_an_unknown_key_is_refused(user):
    key, raw = api_key_create(user=user)
    with pytest.raises(NotAuthenticated):
        api_key_authenticate(raw=raw + "x")
    with pytest.raises(NotAuthenticated):
        api_key_authenticate(raw=key.key_hash)  # knowing the stored hash is not enough


def test_authenticating_records_last_use(user):
    key, raw = api_key_create(user=user)
    assert key.last_used_at is None
    before = timezone.now()
    api_key_authenticate(raw=raw)
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert key.last_used_at >= before


def test_an_api_request_with_the_key_is_served(user, client_for):
    response = client_for(user).get(LIST)
    assert response.status_code == 200, response.content
    assert response.json() == {"agents": [], "count": 0}


def test_an_api_request_with_a_garbage_key_is_401_in_the_error_shape(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer ac_garbage_not-a-key")
    response = client.get(LIST)
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_api_request_with_a_revoked_key_is_401(user):
    key, raw = api_key_create(user=user)
    api_key_revoke(key=key)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.get(LIST)
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"


def test_an_api_request_without_a_key_is_401():
    response = APIClient().get(LIST)
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"


def test_ensure_operator_creates_a_superuser_once_and_shows_its_password_once():
    first = StringIO()
    call_command("ensure_operator", "--username", "root", stdout=first)
    operator = User.objects.get(username="root")
    assert operator.is_superuser
    assert operator.is_staff
    password = first.getvalue().split("with password ", 1)[1].split()[0]
    assert operator.check_password(password)

    second = StringIO()
    call_command("ensure_operator", "--username", "root", stdout=second)
    assert "exists" in second.getvalue()
    assert password not in second.getvalue()
    assert User.objects.filter(is_superuser=True).count() == 1
