"""Scopes: what a request may do, from its API key's scopes and its user's role.

An API key grants the scopes it holds, bounded by its user's role; a browser session or a JWT
grants everything the role allows. Every user may ``read`` and ``write`` their own things;
``admin`` (operator endpoints) needs a staff user, whatever a key says.
"""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from console.errors import Forbidden
from console.models import ApiKey

__all__ = ["HasScope", "IsOperator", "is_operator", "scopes_of"]

READ, WRITE, ADMIN = ApiKey.Scope.READ.value, ApiKey.Scope.WRITE.value, ApiKey.Scope.ADMIN.value


def scopes_of(request: Request) -> frozenset[str]:
    """The scopes the request carries: its key's, within what its user's role allows."""
    user = request.user
    if not user or not user.is_authenticated:
        return frozenset()
    role = {READ, WRITE, ADMIN} if user.is_staff else {READ, WRITE}
    if isinstance(request.auth, ApiKey):
        return frozenset(role.intersection(request.auth.scopes))
    return frozenset(role)


def is_operator(request: Request) -> bool:
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
