"""The Django admin for scaling rules (edits recorded in the audit log, as every operator edit
is) and their decisions (read-only: the autoscaler writes them)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from console.admin import AuditedAdmin
from scaling import services
from scaling.models import ScalingDecision, ScalingRule


@admin.register(ScalingRule)
class ScalingRuleAdmin(AuditedAdmin):
    list_display = (
        "name",
        "model",
        "enabled",
        "bounds",
        "per_agent",
        "thresholds",
    )
    list_filter = ("enabled", "model", "predictive")
    search_fields = ("name", "model")
    readonly_fields = ("last_evaluated_at", "created_at", "updated_at")
    raw_id_fields = ("owner",)
    fieldsets = (
        (None, {"fields": ("name", "owner", "model", "system_prompt", "enabled")}),
        (
            "Size and load",
            {
                "fields": (
                    "min_agents",
                    "max_agents",
                    "warm_pool_size",
                    "target_sessions_per_agent",
                    "scale_up_threshold",
                    "scale_down_threshold",
                    "evaluation_interval_seconds",
                )
            },
        ),
        (
            "Scaling up",
            {
                "fields": (
                    "scale_up_cooldown_seconds",
                    "scale_up_max_step",
                    "scale_up_step_unit",
                    "scale_up_period_seconds",
                )
            },
        ),
        (
            "Scaling down",
            {
                "fields": (
                    "scale_down_cooldown_seconds",
                    "scale_down_max_step",
                    "scale_down_step_unit",
                    "scale_down_period_seconds",
                )
            },
        ),
        (
            "When metrics fail, and forecasting",
            {
                "fields": (
                    "on_metrics_failure",
                    "fallback_agents",
                    "predictive",
                    "predictive_window_minutes",
                )
            },
        ),
        (None, {"fields": ("last_evaluated_at", "created_at", "updated_at")}),
    )
    actions = ("enable_rules", "pause_rules")

    @admin.display(description="Agents", ordering="min_agents")
    def bounds(self, rule: ScalingRule) -> str:
        return f"{rule.min_agents}\u2013{rule.max_agents}"

    @admin.display(description="Sessions / agent", ordering="target_sessions_per_agent")
    def per_agent(self, rule: ScalingRule) -> int:
        return rule.target_sessions_per_agent

    @admin.display(description="Shrink \u00b7 grow")
    def thresholds(self, rule: ScalingRule) -> str:
        return f"{rule.scale_down_threshold:.0%} \u00b7 {rule.scale_up_threshold:.0%}"

    @admin.action(description="Enable the selected rules", permissions=["change"])
    def enable_rules(self, request: HttpRequest, queryset: QuerySet[ScalingRule]) -> None:
        self._set_enabled(request, queryset, enabled=True)

    @admin.action(description="Pause the selected rules", permissions=["change"])
    def pause_rules(self, request: HttpRequest, queryset: QuerySet[ScalingRule]) -> None:
        self._set_enabled(request, queryset, enabled=False)

    def _set_enabled(
        self, request: HttpRequest, queryset: QuerySet[ScalingRule], *, enabled: bool
    ) -> None:
        rules = list(queryset)
        for rule in rules:
            services.scaling_rule_set_enabled(rule=rule, enabled=enabled, actor=request.user)
        verb = "Enabled" if enabled else "Paused"
        self.message_user(request, f"{verb} {len(rules)} rule(s).", messages.SUCCESS)


@admin.register(ScalingDecision)
class ScalingDecisionAdmin(admin.ModelAdmin):
    """Decisions, read-only: the autoscaler writes them, nobody edits them."""

    list_display = (
        "created_at",
        "rule",
        "action",
        "current_agents",
        "desired_agents",
        "recommended_agents",
        "observed_sessions",
        "utilization",
    )
    list_filter = ("action", "rule")
    list_select_related = ("rule",)
    search_fields = ("rule__name", "reason")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
