"""The log of MCP tool calls, read only: the MCP server writes it."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from mcpserver.models import ToolCall


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "user",
        "tool",
        "transport",
        "outcome",
        "error_code",
        "duration_ms",
    )
    list_filter = ("outcome", "transport", "tool")
    search_fields = ("tool", "user__username", "error_code")
    list_select_related = ("user",)
    raw_id_fields = ("user", "api_key")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
