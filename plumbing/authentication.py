"""The credentials a request presents, before anyone checks them."""

from __future__ import annotations

from collections.abc import Mapping

from django.http import HttpRequest

__all__ = ["bearer_token", "bearer_token_of"]


def bearer_token(request: HttpRequest) -> str:
    """The token from ``Authorization: Bearer …`` or ``x-api-key``, or ""."""
    return bearer_token_of(request.headers)


def bearer_token_of(headers: Mapping[str, str]) -> str:
    """``bearer_token`` of a request's headers (a case-insensitive mapping)."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip()
