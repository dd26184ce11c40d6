"""The Django admin for agents, sessions and messages."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agents import services
from agents.models import (
    Agent,
    AgentMcpServer,
    Message,
    SandboxHost,
    ServingProcess,
    Session,
    WarmPool,
)
from plumbing.errors import ConsoleError


class AgentMcpServerInline(admin.TabularInline):
    """An agent's MCP servers, their secrets never shown."""

    model = AgentMcpServer
    fields = ("name", "url", "created_at")
    readonly_fields = ("name", "url", "created_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


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
    list_filter = ("status", "backend", "architecture", "model")
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
        "paused_at",
        "pause_method",
    )
    exclude = ("anthropic_key_encrypted",)
    inlines = (AgentMcpServerInline,)
    actions = ("stop", "start", "pause", "resume", "restart", "destroy")

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet[Agent],
        service: Callable[..., Agent],
        verb: str,
    ) -> None:
        done, refused = 0, []
        for agent in queryset.select_related("host").filter(deleted_at__isnull=True):
            try:
                service(agent=agent, actor=request.user)
                done += 1
            except ConsoleError as exc:
                refused.append(f"{agent}: {exc.message}")
        self.message_user(request, f"{verb} {done} agent(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Refused: " + "; ".join(refused), messages.WARNING)

    @admin.action(description="Stop the selected agents (keep their workspaces)")
    def stop(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, services.agent_stop, "Stopping")

    @admin.action(description="Start the selected stopped or failed agents")
    def start(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, services.agent_start, "Starting")

    @admin.action(description="Pause the selected running agents (no CPU, memory kept)")
    def pause(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, services.agent_pause, "Pausing")

    @admin.action(description="Resume the selected paused agents")
    def resume(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, services.agent_resume, "Resuming")

    @admin.action(description="Restart the selected agents")
    def restart(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, services.agent_restart, "Restarting")

    @admin.action(description="Delete the selected agents (tear their sandboxes down)")
    def destroy(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, services.agent_destroy, "Deleting")


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
    readonly_fields = ("relay_url",)  # the host's worker records it from SANDBOX_RELAY_URL


@admin.register(ServingProcess)
class ServingProcessAdmin(admin.ModelAdmin):
    """The web, gateway and relay processes as they last said they were alive: read only."""

    list_display = ("machine", "kind", "pid", "metrics_url", "started_at", "seen_at")
    list_filter = ("kind", "machine")
    search_fields = ("machine",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(WarmPool)
class WarmPoolAdmin(admin.ModelAdmin):
    list_display = ("name", "model", "vcpus", "memory_mib", "size", "on_idle", "is_enabled")
    list_filter = ("is_enabled", "model")
    search_fields = ("name", "model")
    list_editable = ("size", "is_enabled")
