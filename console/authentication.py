"""Authentication: API keys and JWTs for DRF views and the plain async views (chat, gateway),
and the password backend that counts sign-in attempts (the API, the login page, the admin)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, throttling
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import InvalidToken
from rest_framework_simplejwt.tokens import Token

from console.models import ApiKey, Quota, User
from console.services import (
    api_key_authenticate,
    client_address,
    jwt_user,
    login_attempt_admit,
    login_attempt_succeeded,
    request_admit,
)
from plumbing.authentication import bearer_token
from plumbing.database import database_sync_to_async
from plumbing.errors import WWW_AUTHENTICATE, Forbidden, NotAuthenticated, RateLimited

__all__ = [
    "ApiKeyAuthentication",
    "JwtAuthentication",
    "QuotaThrottle",
    "ThrottledModelBackend",
    "login_page_throttled",
    "request_user",
    "token_credential",
]


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>`` with a console API key."""

    def authenticate(self, request: Request) -> tuple[User, object] | None:
        token = bearer_token(request._request)
        if not token or _looks_like_jwt(token):
            return None  # a JWT is JwtAuthentication's to check
        try:
            key = api_key_authenticate(raw=token)
        except NotAuthenticated as exc:
            raise AuthenticationFailed(exc.message) from exc
        return key.user, key

    def authenticate_header(self, request: Request) -> str:
        return WWW_AUTHENTICATE


def _looks_like_jwt(token: str) -> bool:
    # API keys are "ac_<hex>_<urlsafe>", never dotted; a JWT is three dotted base64url parts.
    return token.startswith("eyJ") and token.count(".") == 2


class JwtAuthentication(JWTAuthentication):
    """``Authorization: Bearer <access token>`` from ``/api/v1/auth/login``; a bad or expired
    token is refused with a plain sentence rather than simplejwt's nested detail."""

    def authenticate(self, request: Request) -> tuple[User, object] | None:
        try:
            return super().authenticate(request)
        except InvalidToken as exc:
            raise AuthenticationFailed("the access token is invalid or expired") from exc

    def get_user(self, validated_token: Token) -> User:
        """The token's user while its sign-in stands (see ``console.services.credentials``)."""
        try:
            return jwt_user(token=validated_token)
        except NotAuthenticated as exc:
            raise AuthenticationFailed(exc.message) from exc

    def authenticate_header(self, request: Request) -> str:
        return WWW_AUTHENTICATE


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes API key authentication in the OpenAPI schema."""

    target_class = "console.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A console API key."}


class JwtAuthenticationScheme(SimpleJWTScheme):
    """Describes JWT authentication in the OpenAPI schema."""

    target_class = "console.authentication.JwtAuthentication"
    name = "Jwt"


def _loaded_quota(user: User) -> Quota | None:
    """The user's quota if authentication already loaded it (``select_related``), else None."""
    return user._state.fields_cache.get("quota")


class QuotaThrottle(throttling.BaseThrottle):
    """Counts each authenticated API request against its user's (and API key's) request rate,
    exactly and across processes; over the limit, ``RateLimited`` refuses it with 429."""

    def allow_request(self, request: Request, view: object) -> bool:
        if request.user.is_authenticated:
            key = request.auth if isinstance(request.auth, ApiKey) else None
            request._request.rate_status = request_admit(  # type: ignore[attr-defined]
                user_id=request.user.pk, api_key=key, quota=_loaded_quota(request.user)
            )
        return True


def token_credential(token: str) -> tuple[User, ApiKey | None]:
    """The user a bearer token (an API key or a JWT access token) stands for, and the key when
    it is one; else ``NotAuthenticated``."""
    if _looks_like_jwt(token):
        jwt = JwtAuthentication()
        try:
            return jwt.get_user(jwt.get_validated_token(token.encode())), None
        except (InvalidToken, AuthenticationFailed) as exc:
            raise NotAuthenticated("the access token is invalid or expired") from exc
    key = api_key_authenticate(raw=token)
    return key.user, key


def _authenticate(
    request: HttpRequest, session_user: User, scope: str
) -> tuple[User, ApiKey | None]:
    """The caller by API key, JWT or browser session (with its CSRF token for a write), with
    ``scope`` checked; raises ``NotAuthenticated`` or ``Forbidden``."""
    token = bearer_token(request)
    key = None
    if token:
        user, key = token_credential(token)
    else:
        user = session_user
        if not user.is_authenticated:
            raise NotAuthenticated(
                "authentication is required: send Authorization: Bearer <API key>"
            )
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            reason = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
            if reason is not None:
                raise Forbidden("the CSRF token is missing or wrong")
    if key is not None and scope not in key.scopes:
        raise Forbidden(
            f"this credential lacks the {scope} scope", details={"required_scope": scope}
        )
    return user, key


async def request_user(request: HttpRequest, *, scope: str = "read") -> User:
    """The caller of an async view, by API key, JWT or browser session, holding ``scope``;
    or ``NotAuthenticated``/``Forbidden``. The request is counted against the caller's request
    rate, as ``QuotaThrottle`` does."""
    session_user = await request.auser()
    user, key = await database_sync_to_async(_authenticate)(request, session_user, scope)
    # As DRF's request.user and request.auth, for is_operator: the caller, and their key.
    request.user, request.auth = user, key  # type: ignore[attr-defined]
    request.rate_status = await database_sync_to_async(request_admit)(  # type: ignore[attr-defined]
        user_id=user.pk, api_key=key, quota=_loaded_quota(user)
    )
    return user


class ThrottledModelBackend(ModelBackend):
    """Username and password, each attempt counted per account and per client address first:
    over the limit, ``RateLimited`` (429) whether the password is right or not."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if username is None:
            username = kwargs.get(User.USERNAME_FIELD)
        if username is None or password is None:
            return None
        meta = request.META if request is not None else {}
        attempt = login_attempt_admit(username=username, address=client_address(meta))
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            login_attempt_succeeded(attempt=attempt)
        return user


def login_page_throttled(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A login page (the console's, the admin's) that answers a throttled attempt with 429,
    its Retry-After and a sentence, instead of the form."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except RateLimited as exc:
            context = {"message": exc.message, "retry_after": exc.retry_after}
            response = render(request, "429.html", context, status=429)
            for name, value in exc.headers().items():
                response[name] = value
            return response

    return wrapped
