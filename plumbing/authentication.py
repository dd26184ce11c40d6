"""The credentials a request presents, before anyone checks them."""

from __future__ import annotations

from django.http import HttpRequest

__all__ = ["bearer_token"]


def bearer_token(request: HttpRequest) -> str:
    """The token from ``Authorization: Bearer …`` or ``x-api-key``, or ""."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip()
