"""The Django admin for agents, sessions and messages."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agents import services
from agents.models import Agent, Message, SandboxHost, Session, WarmPool


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "owner",
        "model",
        "status",
        "backend",
        "vcpus",
        "memory_mib",
        "created_at",
    )
    list_filter = ("status", "backend", "model")
    search_fields = ("id", "name", "owner__username")
    list_select_related = ("owner",)
    readonly_fields = (
        "id",
        "status",
        "backend",
        "sandbox_id",
        "endpoint",
        "last_error",
        "created_at",
        "updated_at",
        "started_at",
        "stopped_at",
        "deleted_at",
    )
    exclude = ("anthropic_key_encrypted",)
    actions = ("destroy",)

    @admin.action(description="Delete the selected agents (tear their sandboxes down)")
    def destroy(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent in queryset.filter(deleted_at__isnull=True):
            services.agent_destroy(agent=agent)
        self.message_user(request, "Teardown queued.", messages.SUCCESS)


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    readonly_fields = ("role", "content", "input_tokens", "output_tokens", "cost_usd", "created_at")


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "agent", "user", "created_at", "updated_at", "closed_at")
    search_fields = ("id", "title", "user__username")
    list_select_related = ("agent", "user")
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("session", "role", "created_at", "input_tokens", "output_tokens", "cost_usd")
    list_filter = ("role",)
    list_select_related = ("session",)


@admin.register(SandboxHost)
class SandboxHostAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "backend",
        "accel",
        "capacity_vcpus",
        "capacity_memory_mib",
        "is_online",
        "is_draining",
        "last_seen_at",
    )
    list_filter = ("backend", "is_online", "is_draining")
    search_fields = ("name",)
    list_editable = ("is_draining",)


@admin.register(WarmPool)
class WarmPoolAdmin(admin.ModelAdmin):
    list_display = ("name", "model", "vcpus", "memory_mib", "size", "is_enabled")
    list_filter = ("is_enabled", "model")
    search_fields = ("name", "model")
    list_editable = ("size", "is_enabled")
