"""API keys through the API: made with scopes and shown once, listed, read and revoked by their
owner only; a key's scopes bound what it may do."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from console.models import ApiKey
from console.services import api_key_authenticate, api_key_create
from tests.console.api.conftest import error_of

pytestmark = pytest.mark.django_db

KEYS = "/api/v1/keys"


def test_create_returns_the_secret_once_with_default_scopes(user, client_for):
    client = client_for(user)
    response = client.post(KEYS, {"name": "ci"}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["scopes"] == ["read", "write"]
    assert api_key_authenticate(raw=body["key"]).pk == body["id"]
    listed = client.get(f"{KEYS}/{body['id']}").json()
    assert "key" not in listed
    assert listed["prefix"] == body["prefix"]


def test_a_read_only_key_works_for_reads(user, client_for):
    raw = client_for(user).post(KEYS, {"scopes": ["read"]}, format="json").json()["key"]
    reader = APIClient()
    reader.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert reader.get(KEYS).status_code == 200
    refused = reader.post(KEYS, {"name": "more"}, format="json")
    assert refused.status_code == 403
    assert error_of(refused)["details"] == {"required_scope": "write"}


def test_a_write_only_key_cannot_read(user, scoped_client):
    response = scoped_client(user, "write").get(KEYS)
    assert response.status_code == 403
    assert error_of(response)["details"] == {"required_scope": "read"}


def test_admin_scope_is_refused_to_a_non_staff_user(user, client_for):
    response = client_for(user).post(KEYS, {"scopes": ["read", "admin"]}, format="json")
    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"
    assert ApiKey.objects.count() == 1  # the client's own


def test_an_operator_grants_admin_only_from_a_credential_that_has_it(operator, scoped_client):
    plain = scoped_client(operator, "read", "write").post(
        KEYS, {"scopes": ["admin", "read"]}, format="json"
    )
    assert plain.status_code == 403
    assert error_of(plain)["details"] == {"scopes": ["admin"]}

    admin = scoped_client(operator, "read", "write", "admin")
    response = admin.post(KEYS, {"scopes": ["admin", "read"]}, format="json")
    assert response.status_code == 201
    assert response.json()["scopes"] == ["admin", "read"]


def test_a_write_only_key_cannot_mint_a_key_that_reads(user, scoped_client):
    writer = scoped_client(user, "write")
    defaults = writer.post(KEYS, {"name": "more"}, format="json")  # read and write by default
    assert defaults.status_code == 403
    assert error_of(defaults)["details"] == {"scopes": ["read"]}
    assert writer.post(KEYS, {"scopes": ["write"]}, format="json").status_code == 201


def test_unknown_scopes_and_past_expiry_are_invalid(user, client_for):
    client = client_for(user)
    bad_scope = client.post(KEYS, {"scopes": ["root"]}, format="json")
    assert bad_scope.status_code == 400
    assert error_of(bad_scope)["code"] == "invalid_request"
    assert "scopes" in error_of(bad_scope)["details"]

    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    expired = client.post(KEYS, {"expires_at": past}, format="json")
    assert expired.status_code == 400
    assert "expires_at" in error_of(expired)["details"]


def test_an_expiring_key_is_refused_after_its_expiry(user, client_for):
    soon = timezone.now() + timedelta(hours=1)
    body = client_for(user).post(KEYS, {"expires_at": soon.isoformat()}, format="json").json()
    ApiKey.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['key']}")

    response = client.get(KEYS)
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"


def test_list_shows_only_own_keys_paginated_by_cursor(user, outsider, client_for):
    client = client_for(user)
    for name in ("a", "b", "c"):
        api_key_create(user=user, name=name)
    api_key_create(user=outsider, name="theirs")

    first = client.get(KEYS, {"page_size": 2}).json()
    second = client.get(first["next"]).json()

    names = [k["name"] for k in first["results"] + second["results"]]
    assert names == ["c", "b", "a", ""]  # newest first; "" is the client's own key
    assert second["next"] is None


def test_list_costs_the_same_queries_for_more_keys(user, client_for, constant_queries):
    constant_queries(client_for(user), KEYS, lambda: [api_key_create(user=user) for _ in range(5)])


def test_an_outsider_cannot_see_or_revoke_a_key(user, outsider, client_for):
    key, raw = api_key_create(user=user)
    intruder = client_for(outsider)

    assert error_of(intruder.get(f"{KEYS}/{key.pk}"))["code"] == "not_found"
    assert intruder.post(f"{KEYS}/{key.pk}/revoke").status_code == 404
    assert intruder.delete(f"{KEYS}/{key.pk}").status_code == 404
    assert api_key_authenticate(raw=raw) == key


def test_revoke_and_delete_revoke_the_key(user, client_for):
    client = client_for(user)
    one, raw_one = api_key_create(user=user)
    two, _ = api_key_create(user=user)

    revoked = client.post(f"{KEYS}/{one.pk}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["usable"] is False
    assert client.delete(f"{KEYS}/{two.pk}").status_code == 204

    two.refresh_from_db()
    assert two.revoked_at is not None
    refused = APIClient()
    refused.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_one}")
    assert refused.get(KEYS).status_code == 401


def test_an_anonymous_caller_is_refused_in_the_error_shape():
    response = APIClient().get(KEYS)
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"


def test_a_browser_session_has_every_scope_of_its_role(user):
    client = APIClient()
    client.force_login(user)
    assert client.get(KEYS).status_code == 200
    assert client.post(KEYS, {"name": "from the browser"}, format="json").status_code == 201
    assert client.get("/api/v1/quotas").status_code == 403  # not staff: no admin
