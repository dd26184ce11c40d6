"""API key authentication, for DRF views and for the plain async views (chat, gateway)."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication
from rest_framework.request import Request

from console.errors import NotAuthenticated
from console.models import User
from console.services import api_key_authenticate

__all__ = ["ApiKeyAuthentication", "bearer_token", "request_user"]


def bearer_token(request: HttpRequest) -> str:
    """The token from ``Authorization: Bearer …`` or ``x-api-key``, or ""."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>`` with a console API key."""

    def authenticate(self, request: Request) -> tuple[User, object] | None:
        token = bearer_token(request._request)
        if not token:
            return None
        try:
            key = api_key_authenticate(raw=token)
        except NotAuthenticated as exc:
            from rest_framework.exceptions import AuthenticationFailed

            raise AuthenticationFailed(exc.message) from exc
        return key.user, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes API key authentication in the OpenAPI schema."""

    target_class = "console.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A console API key."}


async def request_user(request: HttpRequest) -> User:
    """The caller of an async view: an API key, else the browser session; or NotAuthenticated."""
    token = bearer_token(request)
    if token:
        key = await sync_to_async(api_key_authenticate)(raw=token)
        return key.user
    user = await request.auser()
    if user.is_authenticated:
        return user
    raise NotAuthenticated("authentication is required: send Authorization: Bearer <API key>")
