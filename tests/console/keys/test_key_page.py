"""The key page (/keys/): everyone makes, lists and revokes their own API keys; a key's secret
is shown once; scopes go through ``api_key_create``, so only operators may give admin; another
user's key is a 404."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from console.models import ApiKey
from console.services import api_key_authenticate, api_key_create

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def _secret(html: str) -> str:
    found = re.search(r'id="key-secret-value"[^>]*value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def test_the_page_needs_a_sign_in(client):
    response = client.get("/keys/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_a_user_sees_their_own_keys_only_and_no_admin_choice(client, user, outsider):
    api_key_create(user=user, name="ci")
    api_key_create(user=outsider, name="mallorys-key")
    client.force_login(user)

    page = client.get("/keys/").content.decode()

    assert "ci" in page and "mallorys-key" not in page
    assert 'value="read"' in page and 'value="write"' in page
    assert 'value="admin"' not in page  # only offered where api_key_create allows it
    assert 'href="/keys/"' in page  # the nav leads here


def test_creating_a_key_shows_its_secret_once(client, user):
    client.force_login(user)

    response = client.post(
        "/keys/new", {"name": "deploy", "scopes": ["read"], "expires_in": "30"}, **HTMX
    )

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    html = response.content.decode()
    raw = _secret(html)
    key = api_key_authenticate(raw=raw)
    assert (key.user, key.name, key.scopes) == (user, "deploy", ["read"])
    assert timedelta(days=29) < key.expires_at - timezone.now() <= timedelta(days=30)
    assert 'hx-swap-oob="true"' in html and f'id="key-{key.pk}"' in html  # the list, refreshed
    assert "created" in html  # the toast
    assert raw not in client.get("/keys/").content.decode()  # never again


def test_a_key_that_never_expires(client, user):
    client.force_login(user)
    response = client.post("/keys/new", {"scopes": ["read", "write"], "expires_in": ""}, **HTMX)
    key = api_key_authenticate(raw=_secret(response.content.decode()))
    assert key.expires_at is None and sorted(key.scopes) == ["read", "write"]


def test_admin_asked_for_by_a_non_operator_is_refused_by_the_service(client, user):
    client.force_login(user)

    response = client.post("/keys/new", {"name": "sneaky", "scopes": ["read", "admin"]}, **HTMX)

    assert response.status_code == 422
    assert "only an operator&#x27;s key may have the admin scope" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_an_operator_may_give_admin(client, operator):
    client.force_login(operator)
    assert 'value="admin"' in client.get("/keys/").content.decode()

    response = client.post("/keys/new", {"scopes": ["read", "write", "admin"]}, **HTMX)

    key = api_key_authenticate(raw=_secret(response.content.decode()))
    assert sorted(key.scopes) == ["admin", "read", "write"]


def test_a_key_needs_a_scope(client, user):
    client.force_login(user)
    response = client.post("/keys/new", {"name": "none"}, **HTMX)
    assert response.status_code == 422
    assert "Choose at least one scope." in response.content.decode()
    assert not ApiKey.objects.exists()


def test_revoking_a_key_marks_its_row_and_refuses_it(client, user):
    key, raw = api_key_create(user=user, name="old")
    client.force_login(user)

    response = client.post(f"/keys/{key.pk}/revoke", **HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="key-{key.pk}"' in html and "revoked" in html
    assert "Revoke</button>" not in html
    key.refresh_from_db()
    assert key.revoked_at is not None
    api = client.get("/api/v1/keys", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.status_code == 401


def test_an_outsiders_key_is_a_404_and_stays_live(client, user, outsider):
    key, raw = api_key_create(user=user, name="alices")
    client.force_login(outsider)

    assert client.post(f"/keys/{key.pk}/revoke", **HTMX).status_code == 404
    assert client.post(f"/keys/{key.pk + 1000}/revoke", **HTMX).status_code == 404
    assert api_key_authenticate(raw=raw) == key
    assert "alices" not in client.get("/keys/", **HTMX).content.decode()


def test_a_revoke_needs_post(client, user):
    key, _ = api_key_create(user=user)
    client.force_login(user)
    assert client.get(f"/keys/{key.pk}/revoke").status_code == 405


def test_the_list_shows_every_column(client, user):
    key, raw = api_key_create(
        user=user, name="ci", scopes=["read"], expires_at=timezone.now() + timedelta(days=7)
    )
    api_key_authenticate(raw=raw)  # last used: now
    expired, _ = api_key_create(user=user, name="gone", expires_at=timezone.now())
    client.force_login(user)

    html = client.get("/keys/", **HTMX).content.decode()

    assert html.lstrip().startswith('<section class="card card-flush" id="key-list"')  # fragment
    row = html[html.index(f'id="key-{key.pk}"') :].split("</tr>")[0]
    assert key.prefix in row and ">read<" in row and "active" in row
    assert "0\xa0minutes ago" in row  # last used
    assert "never" not in row  # it expires, and it has been used
    gone = html[html.index(f'id="key-{expired.pk}"') :].split("</tr>")[0]
    assert "expired" in gone


def test_the_list_asks_a_fixed_number_of_queries(client, user, django_assert_num_queries):
    client.force_login(user)
    client.get("/keys/", **HTMX)  # the session, the user: cached from here
    for n in range(5):
        api_key_create(user=user, name=f"k{n}")
    with django_assert_num_queries(3):  # the session, the user, the keys
        client.get("/keys/", **HTMX)
