"""Tenants and the things that bound them: users, quotas, API keys, prices and the usage ledger."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.models import AbstractUser
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

__all__ = ["ApiKey", "ModelPrice", "Quota", "UsageRecord", "User"]

_NONNEGATIVE = [MinValueValidator(0)]


class User(AbstractUser):
    """A person or integration that owns agents. Staff users are operators."""

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"


class Quota(models.Model):
    """The limits one user runs under, and what they have spent in the current budget window.

    Budgets left empty are unlimited. Spending counters are only ever changed by conditional
    UPDATEs in the services, never read-then-written.
    """

    class Window(models.TextChoices):
        DAY = "day", "Calendar day"
        MONTH = "month", "Calendar month"

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="quota")
    is_suspended = models.BooleanField(default=False, help_text="A suspended user can do nothing.")
    max_agents = models.PositiveIntegerField(default=50)
    max_total_vcpus = models.PositiveIntegerField(default=64)
    max_total_memory_mib = models.PositiveIntegerField(default=128 * 1024)
    max_concurrent_sessions = models.PositiveIntegerField(default=100)
    requests_per_minute = models.PositiveIntegerField(default=100)
    budget_window = models.CharField(max_length=8, choices=Window.choices, default=Window.MONTH)
    token_budget = models.PositiveBigIntegerField(null=True, blank=True)
    usd_budget = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, validators=_NONNEGATIVE
    )
    window_started_at = models.DateTimeField(default=timezone.now)
    tokens_used = models.PositiveBigIntegerField(default=0)
    usd_used = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(usd_used__gte=0), name="quota_usd_used_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"Quota of {self.user}"


class ApiKey(models.Model):
    """A bearer key for the API. Only its hash is stored; the key itself is shown once."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, help_text="Visible start of the key.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    def is_usable(self, now: timezone.datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ModelPrice(models.Model):
    """The price of one model's tokens, in USD per million, from a date on.

    The price in force at a moment is the row with the latest ``effective_from`` not after it.
    """

    model = models.CharField(max_length=100)
    effective_from = models.DateField()
    input_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, validators=_NONNEGATIVE)
    output_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, validators=_NONNEGATIVE)
    cache_write_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, validators=_NONNEGATIVE
    )
    cache_read_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, validators=_NONNEGATIVE
    )

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="price_model_date"),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from}"


class UsageRecord(models.Model):
    """One priced call to Claude: the ledger row every total and budget is built from."""

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="usage_records")
    agent = models.ForeignKey(
        "agents.Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    session = models.ForeignKey(
        "agents.Session", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    model = models.CharField(max_length=100)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cache_creation_input_tokens = models.PositiveIntegerField(default=0)
    cache_read_input_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8)
    request_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "created_at"], name="usage_user_time")]

    def __str__(self) -> str:
        return f"{self.model} {self.total_tokens} tokens ${self.cost_usd}"

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )
