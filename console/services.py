"""Services for users, quotas, API keys and the usage ledger."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from console.errors import NotAuthenticated, UserSuspended
from console.models import ApiKey, ModelPrice, Quota, UsageRecord, User

__all__ = [
    "TokenUsage",
    "api_key_authenticate",
    "api_key_create",
    "api_key_revoke",
    "operator_ensure",
    "price_for",
    "quota_get",
    "quota_reset_window",
    "quota_set_suspended",
    "usage_record",
    "user_check_active",
]

API_KEY_PREFIX = "ac_"
_LAST_USED_GRANULARITY = timedelta(minutes=1)
_MILLION = Decimal(1_000_000)


def _hash_key(raw: str) -> str:
    # Keys carry 256 random bits, so a fast hash is safe; it must be fast to check every request.
    return hashlib.sha256(raw.encode()).hexdigest()


def api_key_create(
    *, user: User, name: str = "", expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never shown again."""
    prefix = API_KEY_PREFIX + secrets.token_hex(4)
    raw = f"{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        user=user, name=name, prefix=prefix, key_hash=_hash_key(raw), expires_at=expires_at
    )
    return key, raw


def api_key_authenticate(*, raw: str) -> ApiKey:
    """The usable key ``raw`` stands for, with its user; raises ``NotAuthenticated``."""
    key = (
        ApiKey.objects.select_related("user", "user__quota").filter(key_hash=_hash_key(raw)).first()
    )
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
    for user_id in user_ids:
        Quota.objects.get_or_create(user_id=user_id)
    return Quota.objects.filter(user_id__in=user_ids).update(is_suspended=suspended)


def quota_reset_window(*, quota_ids: list[int]) -> int:
    """Start a new budget window now, with nothing spent."""
    return Quota.objects.filter(pk__in=quota_ids).update(
        tokens_used=0, usd_used=Decimal(0), window_started_at=timezone.now()
    )


def operator_ensure(*, username: str) -> str | None:
    """Create the operator account if no superuser exists; return its new password, else None."""
    if User.objects.filter(is_superuser=True).exists():
        return None
    password = secrets.token_urlsafe(12)
    User.objects.create_superuser(username=username, email="", password=password)
    return password


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts as Anthropic reports them in a response's ``usage``."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


def price_for(*, model: str, at: datetime) -> ModelPrice | None:
    """The price of ``model`` in force at ``at``; a dated snapshot name falls back to its family."""
    candidates = [model]
    base, _, suffix = model.rpartition("-")
    if base and suffix.isdigit() and len(suffix) == 8:
        candidates.append(base)
    for name in candidates:
        price = (
            ModelPrice.objects.filter(model=name, effective_from__lte=at.date())
            .order_by("-effective_from")
            .first()
        )
        if price is not None:
            return price
    return None


def cost_of(*, usage: TokenUsage, price: ModelPrice | None) -> Decimal:
    if price is None:
        return Decimal(0)
    total = (
        usage.input_tokens * price.input_per_mtok
        + usage.output_tokens * price.output_per_mtok
        + usage.cache_creation_input_tokens * price.cache_write_per_mtok
        + usage.cache_read_input_tokens * price.cache_read_per_mtok
    )
    return (total / _MILLION).quantize(Decimal("0.00000001"))


def usage_record(
    *,
    user_id: int,
    model: str,
    usage: TokenUsage,
    agent_id: object | None = None,
    session_id: object | None = None,
    request_id: str = "",
) -> UsageRecord:
    """Price one call and write it to the ledger, adding it to the user's window atomically."""
    now = timezone.now()
    cost = cost_of(usage=usage, price=price_for(model=model, at=now))
    with transaction.atomic():
        record = UsageRecord.objects.create(
            user_id=user_id,
            agent_id=agent_id,
            session_id=session_id,
            model=model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cost_usd=cost,
            request_id=request_id,
            created_at=now,
        )
        Quota.objects.get_or_create(user_id=user_id)
        Quota.objects.filter(user_id=user_id).update(
            tokens_used=F("tokens_used") + usage.total, usd_used=F("usd_used") + cost
        )
    return record
