"""Password sign-ins: their JWTs (families that rotate and end), and how often they may be tried.

A JWT is good while its sign-in's family is live, its user active and not suspended, and their
password the one it was issued under (its ``cred`` claim is an HMAC of the password hash, so any
password change, wherever it is made, ends every earlier token). Sign-in attempts are counted per
account and per client address in the database-backed rate counters, exactly across processes.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, Sum
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from console.models import RateCounter, TokenFamily, User
from console.services import ledger_sql
from console.services.accounts import jwt_families_revoke, user_check_active
from plumbing.errors import NotAuthenticated, RateLimited

__all__ = [
    "LoginAttempt",
    "client_address",
    "jwt_families_purge",
    "jwt_login",
    "jwt_refresh",
    "jwt_user",
    "login_attempt_admit",
    "login_attempt_succeeded",
]

FAMILY_CLAIM = "fam"
CREDENTIAL_CLAIM = "cred"


def _credential_stamp(user: User) -> str:
    # Keyed with SECRET_KEY: the token shows nothing usable about the password hash.
    return salted_hmac("console.jwt.credential", user.password).hexdigest()[:32]


def _refused(reason: str) -> NotAuthenticated:
    return NotAuthenticated(f"the token is {reason}; sign in again")


def jwt_login(*, user: User) -> dict[str, str]:
    """A new sign-in of ``user`` (already authenticated): its family, and its first refresh
    and access tokens. A suspended user is refused."""
    user_check_active(user=user)
    refresh = RefreshToken.for_user(user)
    family = TokenFamily.objects.create(user=user, current_jti=refresh["jti"])
    refresh[FAMILY_CLAIM] = str(family.pk)
    refresh[CREDENTIAL_CLAIM] = _credential_stamp(user)
    return {"refresh": str(refresh), "access": str(refresh.access_token)}


def jwt_refresh(*, raw: str) -> dict[str, str]:
    """Exchange the family's newest refresh token for a new pair. A token that was already
    exchanged revokes its family: whoever holds the newer one, thief or owner, is signed out."""
    try:
        refresh = RefreshToken(raw)
    except TokenError as exc:
        raise _refused("invalid or expired") from exc
    family_id, jti = refresh.get(FAMILY_CLAIM), refresh.get("jti")
    user = _token_user(refresh)
    new_jti = uuid.uuid4().hex
    now = timezone.now()
    with transaction.atomic():
        rotated = TokenFamily.objects.filter(
            pk=family_id, user=user, current_jti=jti, revoked_at__isnull=True
        ).update(current_jti=new_jti, rotated_at=now)
        if not rotated:
            TokenFamily.objects.filter(pk=family_id, revoked_at__isnull=True).update(
                revoked_at=now, revoked_reason="refresh token reused"
            )
    if not rotated:
        raise _refused("revoked: a refresh token works once, and this sign-in is now ended")
    refresh["jti"] = new_jti
    refresh.set_iat()
    refresh.set_exp()
    return {"refresh": str(refresh), "access": str(refresh.access_token)}


def jwt_families_purge(*, now: datetime | None = None) -> int:
    """Forget sign-ins that can issue nothing more: revoked, or whose newest refresh token has
    expired. Beat runs it every hour; returns how many went."""
    now = now or timezone.now()
    expired = now - settings.SIMPLE_JWT["REFRESH_TOKEN_LIFETIME"]
    ended = (
        Q(revoked_at__isnull=False)
        | Q(rotated_at__isnull=True, created_at__lt=expired)
        | Q(rotated_at__lt=expired)
    )
    deleted, _ = TokenFamily.objects.filter(ended).delete()
    return deleted


def _token_user(token: RefreshToken | AccessToken) -> User:
    """The user of a signature-checked token, if the token still stands: its family live,
    the user active and not suspended, the password unchanged. One query."""
    family_id, user_id = token.get(FAMILY_CLAIM), token.get("user_id")
    try:
        family_id = uuid.UUID(str(family_id))
    except ValueError:
        raise _refused("not one the console issued") from None
    live = TokenFamily.objects.filter(pk=family_id, user_id=OuterRef("pk"), revoked_at__isnull=True)
    user = (
        User.objects.select_related("quota")
        .annotate(family_live=Exists(live))
        .filter(pk=user_id)
        .first()
    )
    if user is None or not user.is_active:
        raise _refused("for an account that no longer signs in")
    if not constant_time_compare(str(token.get(CREDENTIAL_CLAIM, "")), _credential_stamp(user)):
        raise _refused("from before a password change")
    if not user.family_live:  # type: ignore[attr-defined]
        raise _refused("revoked")
    quota = user._state.fields_cache.get("quota")
    if quota is not None and quota.is_suspended:
        # However the suspension was set (a service, the admin's form): lifting it later does
        # not bring this sign-in back.
        jwt_families_revoke(user_ids=[user.pk], reason="suspended")
        raise _refused("for a suspended account")
    return user


def jwt_user(*, token: AccessToken) -> User:
    """The user a validated access token stands for, or ``NotAuthenticated``."""
    return _token_user(token)


# --- Sign-in attempts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """An admitted sign-in attempt: the counters it was counted in."""

    account_scope: str
    address_scope: str


def _scope(kind: str, value: str) -> str:
    # RateCounter.scope holds 40 characters; usernames and IPv6 addresses may not fit.
    return f"login:{kind}:" + hashlib.sha256(value.encode()).hexdigest()[:24]


_LOCK_MINUTE = datetime(2000, 1, 1, tzinfo=UTC)


def _window(now: datetime) -> tuple[datetime, datetime]:
    minute = now.replace(second=0, microsecond=0)
    return minute - timedelta(minutes=settings.LOGIN_WINDOW_MINUTES - 1), minute


def login_attempt_admit(*, username: str, address: str) -> LoginAttempt:
    """Count a sign-in attempt for the account and for the client address, before the password
    is checked; ``RateLimited`` (not counted) when either has had its fill in the window.

    Each counter is bumped by one statement that holds its row until commit, so concurrent
    attempts in any number of processes are counted one at a time."""
    attempt = LoginAttempt(_scope("acct", username.strip().lower()), _scope("addr", address))
    limits = (
        (attempt.account_scope, settings.LOGIN_ATTEMPTS_PER_ACCOUNT, "this account"),
        (attempt.address_scope, settings.LOGIN_ATTEMPTS_PER_ADDRESS, "this address"),
    )
    now = timezone.now()
    start, minute = _window(now)
    with transaction.atomic():
        for scope, limit, whose in limits:
            # The scope's row at a fixed past minute is its lock: attempts in different minutes
            # are counted one at a time too (the hourly prune recreates it as needed).
            ledger_sql.rate_bump(scope, _LOCK_MINUTE, 0)
            ledger_sql.rate_bump(scope, minute, 0)
            counted = RateCounter.objects.filter(scope=scope, minute__gte=start)
            used = counted.aggregate(n=Sum("requests"))["n"] or 0
            if used > limit:  # raised inside the transaction: this attempt is not counted
                oldest = counted.filter(requests__gt=0).order_by("minute").first()
                ends = (oldest.minute if oldest else minute) + timedelta(
                    minutes=settings.LOGIN_WINDOW_MINUTES
                )
                wait = max(1, math.ceil((ends - now).total_seconds()))
                raise RateLimited(
                    f"too many sign-in attempts for {whose}: try again in {wait} s",
                    details={
                        "limit": "login_attempts",
                        "value": limit,
                        "window_minutes": settings.LOGIN_WINDOW_MINUTES,
                        "retry_after": wait,
                    },
                    retry_after=wait,
                )
    return attempt


def login_attempt_succeeded(*, attempt: LoginAttempt) -> None:
    """The right password: the account's failed attempts are forgotten (the address's are not,
    or one account of an attacker's own would clear the way for guessing others')."""
    RateCounter.objects.filter(scope=attempt.account_scope).delete()


def client_address(meta: dict[str, Any]) -> str:
    """The client's address: REMOTE_ADDR, or with ``TRUSTED_PROXIES`` proxies in front, the
    address the outermost of them saw (X-Forwarded-For entries further left are the client's
    own say, and forgeable)."""
    remote = str(meta.get("REMOTE_ADDR") or "")
    hops = settings.TRUSTED_PROXIES
    if not hops:
        return remote
    forwarded = [h.strip() for h in str(meta.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    forwarded = [h for h in forwarded if h]
    # Each trusted proxy appends the address it was reached from; the last hop is REMOTE_ADDR.
    chain = [*forwarded, remote]
    return chain[-hops - 1] if len(chain) > hops else remote  # not through every proxy
