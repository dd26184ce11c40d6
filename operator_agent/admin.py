from __future__ import annotations

from django.contrib import admin

from operator_agent.models import OperatorAction, OperatorAgent, OperatorRun


@admin.register(OperatorAgent)
class OperatorAgentAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "enabled", "every_minutes", "daily_usd_cap", "last_run_at"]
    readonly_fields = ["user", "created_by", "created_at", "last_run_at"]


@admin.register(OperatorRun)
class OperatorRunAdmin(admin.ModelAdmin):
    list_display = ["agent", "status", "trigger", "started_at", "ended_at", "cost_usd"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in OperatorRun._meta.fields]


@admin.register(OperatorAction)
class OperatorActionAdmin(admin.ModelAdmin):
    list_display = ["run", "tool", "status", "at", "cost_impact_usd_per_hour", "decided_by"]
    list_filter = ["status", "tool"]
    readonly_fields = [f.name for f in OperatorAction._meta.fields]
