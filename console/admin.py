"""The Django admin for users, quotas, budgets, API keys, prices, the usage ledger and the audit
log. Every add, change and delete of a user's limits (and of prices) made here goes through the
audit services, so it is recorded with the operator and the values before and after."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import Model, QuerySet
from django.forms.models import BaseModelFormSet
from django.http import HttpRequest
from django.utils.text import Truncator

from console import services
from console.models import ApiKey, AuditEvent, Budget, ModelPrice, Quota, UsageRecord, User

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
                "max_gpus",
            )
        },
    ),
    ("Workspace files", {"fields": ("max_file_bytes", "max_workspace_bytes")}),
    ("Rates", {"fields": ("requests_per_minute", "tokens_per_minute", "concurrent_requests")}),
)


def _edited_fields(form: forms.BaseForm) -> list[str]:
    """The model fields an admin form edits: not its primary key, extra or many-to-many fields."""
    meta = form._meta.model._meta
    concrete = {f.name for f in meta.concrete_fields if not f.primary_key}
    return [name for name in form.fields if name in concrete]


class AuditedAdmin(admin.ModelAdmin):
    """A model admin whose adds, changes and deletes are recorded in the audit log."""

    def save_model(
        self, request: HttpRequest, obj: Model, form: forms.BaseForm, change: bool
    ) -> None:
        services.audited_save(instance=obj, fields=_edited_fields(form), actor=request.user)

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        services.audited_delete(instance=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            services.audited_delete(instance=obj, actor=request.user)


class QuotaInline(admin.StackedInline):
    model = Quota
    can_delete = False
    readonly_fields = ("updated_at",)
    fieldsets = _QUOTA_FIELDSETS


class BudgetInline(admin.TabularInline):
    model = Budget
    extra = 0
    fields = (*Budget.LIMIT_FIELDS, *Budget.COUNTER_FIELDS)
    readonly_fields = Budget.COUNTER_FIELDS


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    inlines = [QuotaInline, BudgetInline]
    list_display = ("username", "email", "is_staff", "is_active", "date_joined")

    def save_formset(
        self, request: HttpRequest, form: forms.BaseForm, formset: BaseModelFormSet, change: bool
    ) -> None:
        """The quota and budgets edited on a user's page are recorded like any other edit."""
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            services.audited_delete(instance=obj, actor=request.user)
        fields = _edited_fields(formset.forms[0]) if formset.forms else []
        for obj in instances:
            services.audited_save(instance=obj, fields=fields, actor=request.user)
        formset.save_m2m()


@admin.register(Quota)
class QuotaAdmin(AuditedAdmin):
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

    @admin.action(description="Suspend the selected users", permissions=["change"])
    def suspend_users(self, request: HttpRequest, queryset: QuerySet[Quota]) -> None:
        n = services.users_set_suspended(
            user_ids=queryset.values_list("user_id", flat=True), suspended=True, actor=request.user
        )
        self.message_user(request, f"Suspended {n} user(s).", messages.SUCCESS)

    @admin.action(description="Lift the suspension of the selected users", permissions=["change"])
    def unsuspend_users(self, request: HttpRequest, queryset: QuerySet[Quota]) -> None:
        n = services.users_set_suspended(
            user_ids=queryset.values_list("user_id", flat=True), suspended=False, actor=request.user
        )
        self.message_user(request, f"Lifted the suspension of {n} user(s).", messages.SUCCESS)


@admin.register(Budget)
class BudgetAdmin(AuditedAdmin):
    list_display = ("user", "metric", "window", "limit", "used", "reserved", "window_started_at")
    list_filter = ("metric", "window")
    search_fields = ("user__username", "user__email")
    list_select_related = ("user",)
    autocomplete_fields = ("user",)
    fields = ("user", *Budget.LIMIT_FIELDS, *Budget.COUNTER_FIELDS, "updated_at")
    actions = ("reset_budgets",)

    def get_readonly_fields(self, request: HttpRequest, obj: Budget | None = None) -> list[str]:
        counters = [*Budget.COUNTER_FIELDS, "updated_at"]
        return counters if obj is None else ["user", *counters]  # a budget stays its user's

    @admin.action(
        description="Reset the selected budgets (a new window from now)", permissions=["change"]
    )
    def reset_budgets(self, request: HttpRequest, queryset: QuerySet[Budget]) -> None:
        selected = list(queryset.values_list("pk", flat=True))
        n = services.budgets_reset(budget_ids=selected, actor=request.user)
        self.message_user(
            request, f"Reset {n} budget(s): a new window starts now.", messages.SUCCESS
        )
        if skipped := len(selected) - n:
            self.message_user(
                request,
                f"Skipped {skipped} rolling budget(s): they count the use of their last hours, "
                "so there is no window to restart; raise their limit instead.",
                messages.WARNING,
            )


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    list_display = (
        "prefix",
        "user",
        "name",
        "requests_per_minute",
        "tokens_per_minute",
        "concurrent_requests",
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

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return [*self.readonly_fields, "user"]  # a key stays its user's

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        n = services.api_keys_revoke(
            key_ids=queryset.values_list("pk", flat=True), actor=request.user
        )
        self.message_user(request, f"Revoked {n} key(s).", messages.SUCCESS)


@admin.register(ModelPrice)
class ModelPriceAdmin(AuditedAdmin):
    list_display = (
        "model",
        "effective_from",
        "input_per_mtok",
        "output_per_mtok",
        "cache_write_per_mtok",
        "cache_write_1h_per_mtok",
        "cache_read_per_mtok",
        "web_search_per_1k",
    )
    list_filter = ("model",)
    search_fields = ("model",)

    def save_model(
        self, request: HttpRequest, obj: Model, form: forms.BaseForm, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        services.price_cache_clear()

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        super().delete_model(request, obj)
        services.price_cache_clear()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        super().delete_queryset(request, queryset)
        services.price_cache_clear()


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


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log, read-only: it is written by the services, never edited."""

    list_display = ("at", "actor", "action", "target", "summary")
    list_filter = ("action", "target_type")
    search_fields = ("target_repr", "actor__username")
    list_select_related = ("actor",)
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="target", ordering="target_repr")
    def target(self, event: AuditEvent) -> str:
        return f"{event.target_repr} ({event.target_type} #{event.target_id})"

    @admin.display(description="changes")
    def summary(self, event: AuditEvent) -> str:
        shown = "; ".join(
            f"{field}: {_shown(old)} → {_shown(new)}" for field, (old, new) in event.changes.items()
        )
        return Truncator(shown).chars(120)


def _shown(value: object) -> str:
    return "—" if value is None else str(value)
