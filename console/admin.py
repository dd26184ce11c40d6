"""The Django admin for users, quotas, API keys, prices and the usage ledger."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from console import services
from console.models import ApiKey, Budget, ModelPrice, Quota, UsageRecord, User

_QUOTA_FIELDSETS = (
    (None, {"fields": ("is_suspended", "timezone")}),
    (
        "Sandboxes",
        {
            "fields": (
                "max_agents",
                "max_total_vcpus",
                "max_total_memory_mib",
                "max_concurrent_sessions",
            )
        },
    ),
    ("Rates", {"fields": ("requests_per_minute", "tokens_per_minute", "concurrent_requests")}),
)


class QuotaInline(admin.StackedInline):
    model = Quota
    can_delete = False
    readonly_fields = ("updated_at",)
    fieldsets = _QUOTA_FIELDSETS


class BudgetInline(admin.TabularInline):
    model = Budget
    extra = 0
    fields = ("metric", "window", "rolling_hours", "limit", "used", "reserved", "window_started_at")
    readonly_fields = ("used", "reserved", "window_started_at")


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    inlines = [QuotaInline, BudgetInline]
    list_display = ("username", "email", "is_staff", "is_active", "date_joined")


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = (
        "user",
        "is_suspended",
        "max_agents",
        "requests_per_minute",
        "tokens_per_minute",
        "concurrent_requests",
        "timezone",
    )
    list_filter = ("is_suspended",)
    search_fields = ("user__username", "user__email")
    list_select_related = ("user",)
    readonly_fields = ("updated_at",)
    fieldsets = _QUOTA_FIELDSETS
    actions = ("suspend_users", "unsuspend_users")

    @admin.action(description="Suspend the selected users")
    def suspend_users(self, request: HttpRequest, queryset: QuerySet[Quota]) -> None:
        n = services.quota_set_suspended(
            user_ids=list(queryset.values_list("user_id", flat=True)), suspended=True
        )
        self.message_user(request, f"Suspended {n} user(s).", messages.SUCCESS)

    @admin.action(description="Lift the suspension of the selected users")
    def unsuspend_users(self, request: HttpRequest, queryset: QuerySet[Quota]) -> None:
        n = services.quota_set_suspended(
            user_ids=list(queryset.values_list("user_id", flat=True)), suspended=False
        )
        self.message_user(request, f"Lifted the suspension of {n} user(s).", messages.SUCCESS)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "prefix",
        "user",
        "name",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are shown once, so they are made by `manage.py create_api_key`

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.api_key_revoke(key=key)
        self.message_user(request, "Revoked.", messages.SUCCESS)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = (
        "model",
        "effective_from",
        "input_per_mtok",
        "output_per_mtok",
        "cache_write_per_mtok",
        "cache_read_per_mtok",
    )
    list_filter = ("model",)
    search_fields = ("model",)


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "user",
        "agent",
        "model",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "request_id",
    )
    list_filter = ("model",)
    search_fields = ("user__username", "request_id", "agent__id")
    list_select_related = ("user", "agent")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # the ledger is written by the gateway only
