"""Scopes: what a request may do, from its API key's scopes and its user's role.

An API key grants the scopes it holds, bounded by its user's role; a browser session or a JWT
grants everything the role allows. Every user may ``read`` and ``write`` their own things;
``admin`` (operator endpoints) needs a staff user, whatever a key says. ``is_operator`` is the
one operator check: views pass its answer down to the selectors and services that widen what
a caller sees or may do, and nothing else looks at ``is_staff`` for it.
"""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from console.models import ApiKey, User
from console.services import role_scopes
from plumbing.errors import Forbidden

__all__ = ["HasScope", "IsOperator", "credential_scopes", "is_operator", "scopes_of"]

READ, WRITE, ADMIN = ApiKey.Scope.READ.value, ApiKey.Scope.WRITE.value, ApiKey.Scope.ADMIN.value


def scopes_of(request: Request | HttpRequest) -> frozenset[str]:
    """The scopes the request carries: its key's, within what its user's role allows. A DRF
    request, or a plain one (``request_user`` sets its ``auth`` to the key it came with)."""
    user = request.user
    if not user or not user.is_authenticated:
        return frozenset()
    key = getattr(request, "auth", None)
    return credential_scopes(user, key if isinstance(key, ApiKey) else None)


def credential_scopes(user: User, key: ApiKey | None) -> frozenset[str]:
    """The scopes of ``user`` signed in with ``key`` (None: a session or JWT, the whole role)."""
    role = role_scopes(user)
    return role if key is None else role.intersection(key.scopes)


def is_operator(request: Request | HttpRequest) -> bool:
    """Whether the request may use operator powers: a staff user whose credential carries
    ``admin`` (a browser session or JWT of a staff user does)."""
    return ADMIN in scopes_of(request)


class HasScope(BasePermission):
    """Safe methods need ``read``; the others need ``write``."""

    def has_permission(self, request: Request, view: object) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False  # IsAuthenticated, listed first, answers 401
        needed = READ if request.method in SAFE_METHODS else WRITE
        if needed not in scopes_of(request):
            raise Forbidden(
                f"this credential lacks the {needed} scope", details={"required_scope": needed}
            )
        return True


class IsOperator(BasePermission):
    """Operator endpoints: a staff user whose credential carries the ``admin`` scope."""

    def has_permission(self, request: Request, view: object) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        if not is_operator(request):
            raise Forbidden(
                "this is for operators: a staff user with the admin scope",
                details={"required_scope": ADMIN},
            )
        return True
