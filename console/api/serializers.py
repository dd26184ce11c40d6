"""What the API reads and answers: API keys, quotas and budgets, usage rows."""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Manager
from django.utils import timezone
from rest_framework import serializers

from console.models import ApiKey, Budget, Quota
from console.selectors import BudgetWindow, budget_windows

__all__ = [
    "ApiKeyCreateSerializer",
    "ApiKeyCreatedSerializer",
    "ApiKeySerializer",
    "BudgetCreateSerializer",
    "BudgetSerializer",
    "BudgetUpdateSerializer",
    "QuotaLimitsSerializer",
    "QuotaSerializer",
    "UsageQuerySerializer",
    "UsageRowSerializer",
]

MAX_USAGE_RANGE = timedelta(days=400)


# --- API keys ------------------------------------------------------------------------------------


# What a quota limits, as operators read and change it.
QUOTA_LIMITS = [
    "is_suspended",
    "max_agents",
    "max_total_vcpus",
    "max_total_memory_mib",
    "max_concurrent_sessions",
    "max_gpus",
    "max_file_bytes",
    "max_workspace_bytes",
    "requests_per_minute",
    "tokens_per_minute",
    "concurrent_requests",
    "timezone",
]


class ApiKeySerializer(serializers.ModelSerializer):
    usable = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "usable",
        ]
        read_only_fields = fields

    def get_usable(self, key: ApiKey) -> bool:
        return key.is_usable()


class ApiKeyCreatedSerializer(ApiKeySerializer):
    """A new key, with its secret: the only answer that ever holds it."""

    key = serializers.SerializerMethodField()

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields

    def get_key(self, key: ApiKey) -> str:
        return self.context["raw_key"]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, default="", allow_blank=True)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKey.Scope.choices),
        allow_empty=False,
        required=False,
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_expires_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("must be in the future")
        return value


# --- Budgets and quotas --------------------------------------------------------------------------


def _timezone_of(budget: Budget) -> str:
    quota = getattr(budget.user, "quota", None)
    return quota.timezone if quota is not None else "UTC"


class BudgetListSerializer(serializers.ListSerializer):
    """Reads the windows of every budget of the list at once (rolling ones: one query per
    distinct length), unless the parent already did."""

    def to_representation(self, data: Iterable[Budget]) -> list[dict[str, Any]]:
        budgets = list(data.all() if isinstance(data, Manager) else data)
        if "budget_windows" not in self.context:
            timezones = self.context.get("timezones") or {
                budget.user_id: _timezone_of(budget) for budget in budgets
            }
            self.child.windows = budget_windows(budgets=budgets, timezones=timezones)
        return super().to_representation(budgets)


class BudgetSerializer(serializers.ModelSerializer):
    """A budget where it stands now: ``used`` in its current window, which starts at
    ``window_start`` and ends at ``window_end``."""

    user_id = serializers.IntegerField(read_only=True)
    used = serializers.SerializerMethodField()
    window_start = serializers.SerializerMethodField()
    window_end = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        list_serializer_class = BudgetListSerializer
        fields = [
            "id",
            "user_id",
            *Budget.LIMIT_FIELDS,
            "used",
            "reserved",
            "window_start",
            "window_end",
            "updated_at",
        ]
        read_only_fields = fields

    windows: dict[int, BudgetWindow] | None = None

    def _window(self, budget: Budget) -> BudgetWindow:
        windows = self.context.get("budget_windows") or self.windows
        if windows is None or budget.pk not in windows:
            windows = budget_windows(
                budgets=[budget], timezones={budget.user_id: _timezone_of(budget)}
            )
            self.windows = windows
        return windows[budget.pk]

    def get_used(self, budget: Budget) -> str:
        return serializers.DecimalField(max_digits=20, decimal_places=8).to_representation(
            self._window(budget).used
        )

    def get_window_start(self, budget: Budget) -> str:
        return self._window(budget).start.isoformat()

    def get_window_end(self, budget: Budget) -> str:
        return self._window(budget).end.isoformat()


class _BudgetInput(serializers.ModelSerializer):
    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        candidate = Budget(**{**self._current(), **attrs})
        try:
            candidate.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return attrs

    def _current(self) -> dict[str, Any]:
        if self.instance is None:
            return {}
        return {f: getattr(self.instance, f) for f in Budget.LIMIT_FIELDS}


class BudgetCreateSerializer(_BudgetInput):
    class Meta:
        model = Budget
        fields = ["user", *Budget.LIMIT_FIELDS]


class BudgetUpdateSerializer(_BudgetInput):
    """A budget's limit and rolling length change; its metric and window do not (make a new
    budget instead), so what it used keeps its meaning."""

    class Meta:
        model = Budget
        fields = ["limit", "rolling_hours"]


class QuotaListSerializer(serializers.ListSerializer):
    def to_representation(self, data: Iterable[Quota]) -> list[dict[str, Any]]:
        quotas = list(data.all() if isinstance(data, Manager) else data)
        budgets = [budget for quota in quotas for budget in quota.user.budgets.all()]
        timezones = {quota.user_id: quota.timezone for quota in quotas}
        self.child.context["budget_windows"] = budget_windows(budgets=budgets, timezones=timezones)
        return super().to_representation(quotas)


class QuotaSerializer(serializers.ModelSerializer):
    """A user's limits and their budgets where they stand now."""

    username = serializers.CharField(source="user.username", read_only=True)
    budgets = serializers.SerializerMethodField()

    class Meta:
        model = Quota
        list_serializer_class = QuotaListSerializer
        fields = ["user_id", "username", *QUOTA_LIMITS, "updated_at", "budgets"]
        read_only_fields = fields

    def get_budgets(self, quota: Quota) -> list[dict[str, Any]]:
        context = {**self.context, "timezones": {quota.user_id: quota.timezone}}
        return BudgetSerializer(quota.user.budgets.all(), many=True, context=context).data


class QuotaLimitsSerializer(serializers.ModelSerializer):
    """What an operator may change of a quota."""

    class Meta:
        model = Quota
        fields = QUOTA_LIMITS


# --- Usage ---------------------------------------------------------------------------------------


class UsageQuerySerializer(serializers.Serializer):
    """``[start, end)``, by default the last 30 days; ``tz`` names the days' time zone."""

    start = serializers.DateTimeField(required=False)
    end = serializers.DateTimeField(required=False)
    group_by = serializers.ChoiceField(
        choices=["agent", "model", "day", "hour", "user"], default="day"
    )
    tz = serializers.CharField(required=False, default="UTC")
    user_id = serializers.IntegerField(required=False, min_value=1)

    def validate_tz(self, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise serializers.ValidationError(f"{value!r} is not a time zone") from None
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.setdefault("end", timezone.now())
        start = attrs.setdefault("start", end - timedelta(days=30))
        if end <= start:
            raise serializers.ValidationError({"end": ["must be after start"]})
        if end - start > MAX_USAGE_RANGE:
            raise serializers.ValidationError(
                {"start": [f"the range may span at most {MAX_USAGE_RANGE.days} days"]}
            )
        return attrs


_USAGE_KEY_FIELDS = {
    "user": ("user_id", serializers.IntegerField),
    "agent": ("agent_id", serializers.CharField),
    "model": ("model", serializers.CharField),
    "day": ("day", serializers.DateField),
    "hour": ("hour", serializers.DateTimeField),
}


class UsageRowSerializer(serializers.Serializer):
    """One row of ``console.selectors.usage_summary``: its key (named after ``group_by``),
    then its counts, tokens and cost (an exact decimal string)."""

    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_creation_input_tokens = serializers.IntegerField()
    cache_read_input_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=20, decimal_places=8)

    def get_fields(self) -> dict[str, serializers.Field]:
        name, field = _USAGE_KEY_FIELDS[self.context["group_by"]]
        return {name: field(allow_null=True), **super().get_fields()}

    @classmethod
    def columns(cls, group_by: str) -> list[str]:
        return list(cls(context={"group_by": group_by}).fields)
