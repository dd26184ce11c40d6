"""Tenants and the things that bound them: users, quotas, API keys, prices and the usage ledger."""

from __future__ import annotations

import uuid
import zoneinfo
from decimal import Decimal

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Budget",
    "IdempotentRequest",
    "ModelPrice",
    "Quota",
    "RateCounter",
    "Refusal",
    "Reservation",
    "TokenFamily",
    "UsageDaily",
    "UsageHourly",
    "UsageRecord",
    "User",
]

_NONNEGATIVE = [MinValueValidator(0)]


class User(AbstractUser):
    """A person or integration that owns agents. Staff users are operators."""

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"


def _valid_timezone(name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{name!r} is not a time zone (try UTC or Europe/Paris)") from None


class Quota(models.Model):
    """The limits one user runs under: sandboxes, their workspace files, request rates, and the
    time zone their calendar budget windows follow. Budgets are ``Budget`` rows; empty limits
    are unlimited."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="quota")
    is_suspended = models.BooleanField(default=False, help_text="A suspended user can do nothing.")
    max_agents = models.PositiveIntegerField(default=50)
    max_total_vcpus = models.PositiveIntegerField(default=64)
    max_total_memory_mib = models.PositiveIntegerField(default=128 * 1024)
    max_concurrent_sessions = models.PositiveIntegerField(default=100)
    max_gpus = models.PositiveIntegerField(
        default=0, help_text="GPUs (or MIG slices) its running agents may hold; 0: none."
    )
    max_file_bytes = models.PositiveBigIntegerField(
        default=32 * 1024 * 1024,
        help_text="The largest file an upload may put in an agent's workspace, in bytes.",
    )
    max_workspace_bytes = models.PositiveBigIntegerField(
        default=1024 * 1024 * 1024,
        help_text="What an agent's workspace may hold once an upload is in, in bytes.",
    )
    # 100 a minute: the AI Agents Platform's documented default per user.
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, default=100, help_text="API and gateway requests; empty: no limit."
    )
    tokens_per_minute = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens through the gateway (worst case at admission)."
    )
    concurrent_requests = models.PositiveIntegerField(
        null=True, blank=True, default=50, help_text="Gateway calls in flight at once."
    )
    timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[_valid_timezone],
        help_text="Calendar budget windows (day, month) start at midnight here.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Quota of {self.user}"


class Budget(models.Model):
    """A cap on what one user spends in a window: USD or tokens, per calendar day or month (in
    the quota's time zone) or over a rolling number of hours.

    ``used`` is what calls settled in the current window; ``reserved`` is the worst case of
    calls still in flight. Admission needs ``used + reserved + worst case <= limit``; both only
    change under the user's quota row lock, in the services.
    """

    class Metric(models.TextChoices):
        USD = "usd", "USD"
        TOKENS = "tokens", "Tokens"

    class Window(models.TextChoices):
        DAY = "day", "Calendar day"
        MONTH = "month", "Calendar month"
        ROLLING = "rolling", "Rolling hours"

    # What an operator sets, and what admission keeps (nobody else writes these): the admin,
    # the API and the ledger's SQL take their lists of a budget's fields from here.
    LIMIT_FIELDS = ("metric", "window", "rolling_hours", "limit")
    COUNTER_FIELDS = ("used", "reserved", "window_started_at")

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="budgets")
    metric = models.CharField(max_length=8, choices=Metric.choices, default=Metric.USD)
    window = models.CharField(max_length=8, choices=Window.choices, default=Window.MONTH)
    rolling_hours = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The length of a rolling window, in whole hours."
    )
    limit = models.DecimalField(max_digits=20, decimal_places=8, validators=_NONNEGATIVE)
    used = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))
    reserved = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))
    window_started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["user", "metric", "window"]
        constraints = [
            models.CheckConstraint(condition=Q(used__gte=0), name="budget_used_nonnegative"),
            models.CheckConstraint(
                condition=Q(reserved__gte=0), name="budget_reserved_nonnegative"
            ),
            models.CheckConstraint(
                condition=~Q(window="rolling") | Q(rolling_hours__gte=1),
                name="budget_rolling_has_hours",
            ),
        ]

    def __str__(self) -> str:
        span = f"{self.rolling_hours} h" if self.window == self.Window.ROLLING else self.window
        unit = "$" if self.metric == self.Metric.USD else "tokens "
        return f"{unit}{self.limit.normalize():f} per {span}"

    def clean(self) -> None:
        if self.window == self.Window.ROLLING and not self.rolling_hours:
            raise ValidationError({"rolling_hours": "A rolling window needs its length in hours."})
        if self.metric == self.Metric.TOKENS and self.limit != self.limit.to_integral_value():
            raise ValidationError({"limit": "A token budget is a whole number of tokens."})


class Reservation(models.Model):
    """A gateway call in flight: what it reserved against each budget and the token rate, until
    it settles. It also counts toward the concurrency limits while it has not expired; one whose
    process died is released by the sweeper once it expires."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        "ApiKey", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    amounts = models.JSONField(default=dict, help_text="Budget id → reserved amount (a string).")
    tokens = models.PositiveBigIntegerField(default=0)
    minute = models.DateTimeField(help_text="The token-rate minute the worst case was counted in.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["user", "expires_at"], name="reservation_user_expiry")]

    def __str__(self) -> str:
        return f"reservation {self.pk} of {self.user_id}"


class RateCounter(models.Model):
    """Requests and tokens of one scope (a user or an API key) in one clock minute."""

    scope = models.CharField(max_length=40)
    minute = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "minute"], name="rate_counter_scope_minute")
        ]

    def __str__(self) -> str:
        return f"{self.scope} at {self.minute:%H:%M}: {self.requests} requests"


class AuditEvent(models.Model):
    """Something an operator did (a quota change, an agent stopped, a rule edited), or an owner
    did inside an agent's sandbox (a command run, a file uploaded or deleted): who, when, to
    what, and the values before and after (for a command: what ran and how it ended)."""

    actor = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=60)
    target_type = models.CharField(max_length=60)
    target_id = models.CharField(max_length=64)
    target_repr = models.CharField(max_length=200)
    changes = models.JSONField(default=dict, help_text="Field → [old, new].")
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_target")]

    def __str__(self) -> str:
        return f"{self.actor or 'system'} {self.action} {self.target_repr}"


def default_api_key_scopes() -> list[str]:
    return ["read", "write"]


class ApiKey(models.Model):
    """A bearer key for the API. Only its hash is stored; the key itself is shown once.

    Its ``scopes`` bound what it may do: ``read`` (safe methods), ``write`` (the others) and
    ``admin`` (operator endpoints, and only while its user is staff)."""

    class Scope(models.TextChoices):
        READ = "read", "Read"
        WRITE = "write", "Write"
        ADMIN = "admin", "Admin"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    scopes = models.JSONField(
        default=default_api_key_scopes, help_text="Some of read, write and admin."
    )
    prefix = models.CharField(max_length=16, unique=True, help_text="Visible start of the key.")
    key_hash = models.CharField(max_length=64, unique=True)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)
    concurrent_requests = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    def clean(self) -> None:
        known = set(self.Scope.values)
        if not isinstance(self.scopes, list) or not set(self.scopes) <= known:
            raise ValidationError({"scopes": f"A list of some of {', '.join(self.Scope.values)}."})

    def is_usable(self, now: timezone.datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ModelPrice(models.Model):
    """The price of one model's tokens, in USD per million, and of its server tools, from a
    date on.

    The price in force at a moment is the row with the latest ``effective_from`` not after it.
    A model without one is refused by the gateway.
    """

    model = models.CharField(max_length=100)
    effective_from = models.DateField()
    input_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, validators=_NONNEGATIVE)
    output_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, validators=_NONNEGATIVE)
    cache_write_per_mtok = models.DecimalField(
        "cache write (5 minutes) per Mtok",
        max_digits=12,
        decimal_places=6,
        validators=_NONNEGATIVE,
        help_text="Writes to the 5-minute cache (Anthropic: 1.25 times input).",
    )
    cache_write_1h_per_mtok = models.DecimalField(
        "cache write (1 hour) per Mtok",
        max_digits=12,
        decimal_places=6,
        validators=_NONNEGATIVE,
        help_text="Writes to the 1-hour cache (Anthropic: 2 times input).",
    )
    cache_read_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, validators=_NONNEGATIVE
    )
    web_search_per_1k = models.DecimalField(
        "web search per 1,000",
        max_digits=12,
        decimal_places=6,
        validators=_NONNEGATIVE,
        help_text="USD per 1,000 web searches (usage.server_tool_use.web_search_requests).",
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
    # db_default too: writers of the ledger that name only the older columns still work.
    cache_creation_1h_input_tokens = models.PositiveIntegerField(
        default=0, db_default=0, help_text="The part of the cache writes priced at the 1-hour rate."
    )
    cache_read_input_tokens = models.PositiveIntegerField(default=0)
    web_search_requests = models.PositiveIntegerField(default=0, db_default=0)
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


class UsageRollup(models.Model):
    """What a roll-up row holds for its user, agent and model: calls, tokens by kind, cost."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    agent_id = models.CharField(max_length=36, blank=True, help_text="Empty: no agent.")
    model = models.CharField(max_length=100)
    requests = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cache_creation_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_read_input_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))

    class Meta:
        abstract = True


class UsageHourly(UsageRollup):
    """The ledger rolled up per user, agent, model and hour, kept current as each call lands,
    so that summaries read a few rows per hour instead of every call."""

    hour = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "hour", "agent_id", "model"], name="usage_hourly_key"
            )
        ]
        indexes = [models.Index(fields=["hour"], name="usage_hourly_hour")]

    def __str__(self) -> str:
        return f"{self.model} {self.hour:%Y-%m-%d %H}h: ${self.cost_usd}"


class UsageDaily(UsageRollup):
    """The ledger rolled up per user, agent, model and UTC day, kept current as each call lands
    (beside ``UsageHourly``), so that ranges of weeks read a few rows per day."""

    day = models.DateField(help_text="The UTC day.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "day", "agent_id", "model"], name="usage_daily_key"
            )
        ]
        # Everyone's days in a range; by day then model, so a chart's grouping reads in order.
        indexes = [models.Index(fields=["day", "model"], name="usage_daily_day_model")]

    def __str__(self) -> str:
        return f"{self.model} {self.day:%Y-%m-%d}: ${self.cost_usd}"


class Refusal(models.Model):
    """Calls of one user refused over one limit in one clock minute, counted: a budget, a rate
    or concurrency limit (of the user or of an API key), or a suspension."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    limit = models.CharField(
        max_length=40, help_text="usd_per_month, requests_per_minute, suspended, …"
    )
    scope = models.CharField(max_length=16, help_text="user or API key")
    minute = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "limit", "scope", "minute"], name="refusal_key")
        ]
        indexes = [models.Index(fields=["minute"], name="refusal_minute")]

    def __str__(self) -> str:
        return f"{self.count} refused over {self.limit} at {self.minute:%H:%M}"


class IdempotentRequest(models.Model):
    """A creating request sent with an ``Idempotency-Key``: while it runs it holds the key, and
    once answered, a retry with the same key gets the same answer instead of a second effect."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    request_hash = models.CharField(max_length=64, help_text="SHA-256 of the request body.")
    status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Empty: running."
    )
    content_type = models.CharField(max_length=100, blank=True)
    body = models.BinaryField(blank=True, default=b"")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotent_request_user_key")
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.key})"


class TokenFamily(models.Model):
    """One password sign-in's JWTs: every refresh token rotated from it, and their access
    tokens. Only the newest refresh token (``current_jti``) may be exchanged; presenting an
    older one revokes the family, and with it every token it issued."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    current_jti = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    rotated_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, db_index=True)
    revoked_reason = models.CharField(max_length=40, blank=True)

    def __str__(self) -> str:
        state = f"revoked ({self.revoked_reason})" if self.revoked_at else "live"
        return f"sign-in of {self.user_id} at {self.created_at:%Y-%m-%d %H:%M}: {state}"
