"""JWT login and refresh for integrations: short-lived access tokens, refused once expired, and
every failure in the console's error shape."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from tests.console.api.conftest import error_of

pytestmark = pytest.mark.django_db

LOGIN, REFRESH, ME = "/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/quotas/me"


def _bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_login_gives_a_short_lived_access_token_that_authenticates(user, settings):
    response = APIClient().post(LOGIN, {"username": "alice", "password": "pw"}, format="json")

    assert response.status_code == 200
    tokens = response.json()
    access = AccessToken(tokens["access"])
    lifetime = access["exp"] - access["iat"]
    assert lifetime == settings.JWT_ACCESS_MINUTES * 60 == 15 * 60
    me = _bearer(tokens["access"]).get(ME)
    assert me.status_code == 200
    assert me.json()["username"] == "alice"


def test_refresh_gives_a_new_access_token(user):
    tokens = APIClient().post(LOGIN, {"username": "alice", "password": "pw"}, format="json")
    response = APIClient().post(REFRESH, {"refresh": tokens.json()["refresh"]}, format="json")

    assert response.status_code == 200
    assert _bearer(response.json()["access"]).get(ME).status_code == 200


def test_a_wrong_password_is_refused_in_the_error_shape(user):
    response = APIClient().post(LOGIN, {"username": "alice", "password": "no"}, format="json")
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"


def test_a_missing_field_is_invalid(user):
    response = APIClient().post(LOGIN, {"username": "alice"}, format="json")
    assert response.status_code == 400
    assert "password" in error_of(response)["details"]


def test_a_bad_refresh_token_is_refused_with_a_sentence():
    response = APIClient().post(REFRESH, {"refresh": "not-a-token"}, format="json")
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "not_authenticated"
    assert isinstance(error["message"], str)
    assert "{" not in error["message"]


def test_an_access_token_cannot_refresh(user):
    access = APIClient().post(LOGIN, {"username": "alice", "password": "pw"}, format="json")
    response = APIClient().post(REFRESH, {"refresh": access.json()["access"]}, format="json")
    assert response.status_code == 401


def test_an_expired_access_token_is_refused(user):
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=-timedelta(seconds=1))

    response = _bearer(str(token)).get(ME)

    assert response.status_code == 401
    assert error_of(response) == {
        "code": "not_authenticated",
        "message": "the access token is invalid or expired",
        "details": {},
    }


def test_a_jwt_has_its_users_role_scopes_only(user, operator):
    def access(username: str) -> str:
        login = {"username": username, "password": "pw"}
        return APIClient().post(LOGIN, login, format="json").json()["access"]

    plain = _bearer(access("alice"))
    assert plain.post("/api/v1/keys", {}, format="json").status_code == 201
    assert plain.get("/api/v1/quotas").status_code == 403
    staff = _bearer(access("olivia"))
    assert staff.get("/api/v1/quotas").status_code == 200
