"""Services for users, their quotas and API keys."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from console.models import ApiKey, Quota, TokenFamily, User, default_api_key_scopes
from console.services import ledger_sql
from plumbing.errors import BadRequest, Forbidden, NotAuthenticated, UserSuspended

__all__ = [
    "api_key_authenticate",
    "api_key_create",
    "api_key_revoke",
    "jwt_families_revoke",
    "operator_ensure",
    "quota_get",
    "quota_set_suspended",
    "role_scopes",
    "user_check_active",
]

API_KEY_PREFIX = "ac_"
_LAST_USED_GRANULARITY = timedelta(minutes=1)
_MILLION = Decimal(1_000_000)


def _hash_key(raw: str) -> str:
    # Keys carry 256 random bits, so a fast hash is safe; it must be fast to check every request.
    return hashlib.sha256(raw.encode()).hexdigest()


def role_scopes(user: User) -> frozenset[str]:
    """The most any credential of ``user`` may carry: ``read`` and ``write`` for everyone,
    ``admin`` too for staff. The one place a user's role becomes powers."""
    scopes = {ApiKey.Scope.READ.value, ApiKey.Scope.WRITE.value}
    if user.is_staff and user.is_active:
        scopes.add(ApiKey.Scope.ADMIN.value)
    return frozenset(scopes)


def api_key_create(
    *,
    user: User,
    name: str = "",
    expires_at: datetime | None = None,
    scopes: Iterable[str] | None = None,
    granted_by: Iterable[str] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never shown again. ``scopes``
    defaults to read and write; only a staff user's key may hold ``admin``. ``granted_by``:
    the scopes of the credential asking (None: the user themselves), which the new key's,
    defaults included, may not exceed."""
    scopes = sorted(set(scopes)) if scopes is not None else default_api_key_scopes()
    unknown = set(scopes) - set(ApiKey.Scope.values)
    if unknown or not scopes:
        raise BadRequest(
            f"scopes must be some of {', '.join(ApiKey.Scope.values)}",
            details={"scopes": sorted(unknown)},
        )
    if not set(scopes) <= role_scopes(user):
        raise Forbidden("only an operator's key may have the admin scope")
    beyond = set(scopes) - set(granted_by) if granted_by is not None else set()
    if beyond:
        raise Forbidden(
            "a key cannot grant scopes its creator's credential lacks",
            details={"scopes": sorted(beyond)},
        )
    prefix = API_KEY_PREFIX + secrets.token_hex(4)
    raw = f"{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=prefix,
        key_hash=_hash_key(raw),
        expires_at=expires_at,
        scopes=scopes,
    )
    return key, raw


def api_key_authenticate(*, raw: str) -> ApiKey:
    """The usable key ``raw`` stands for, with its user and their quota; raises
    ``NotAuthenticated``. Every API and gateway call asks, so the key is read as SQL
    (``ledger_sql``): 0.07 ms, where the ORM's ``select_related`` query took 0.4 ms."""
    key = ledger_sql.api_key_of(_hash_key(raw))
    now = timezone.now()
    if key is None or not key.is_usable(now) or not key.user.is_active:
        raise NotAuthenticated("the API key is unknown, revoked or expired")
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_GRANULARITY:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def api_key_revoke(*, key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def quota_get(*, user: User) -> Quota:
    """The user's quota, created with the defaults on first use."""
    try:
        return user.quota
    except Quota.DoesNotExist:
        quota, _ = Quota.objects.get_or_create(user=user)
        return quota


def user_check_active(*, user: User) -> Quota:
    """Raise ``UserSuspended`` unless the user may act; return their quota."""
    quota = quota_get(user=user)
    if quota.is_suspended:
        raise UserSuspended("this account is suspended; ask an operator")
    return quota


def quota_set_suspended(*, user_ids: list[int], suspended: bool) -> int:
    """Suspend users (ending their sign-ins: JWTs do not outlive a suspension) or lift it."""
    for user_id in user_ids:
        Quota.objects.get_or_create(user_id=user_id)
    if suspended:
        jwt_families_revoke(user_ids=user_ids, reason="suspended")
    return Quota.objects.filter(user_id__in=user_ids).update(is_suspended=suspended)


def jwt_families_revoke(*, user_ids: list[int], reason: str) -> int:
    """End every password sign-in of these users: their refresh and access tokens stop."""
    return TokenFamily.objects.filter(user_id__in=user_ids, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_reason=reason[:40]
    )


def operator_ensure(*, username: str) -> str | None:
    """Create the operator account if no superuser exists; return its new password, else None."""
    if User.objects.filter(is_superuser=True).exists():
        return None
    password = secrets.token_urlsafe(12)
    User.objects.create_superuser(username=username, email="", password=password)
    return password
