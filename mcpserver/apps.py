from __future__ import annotations

from django.apps import AppConfig


class McpServerConfig(AppConfig):
    """The MCP server: the console's operations as tools for models, and the log of each call."""

    name = "mcpserver"
    verbose_name = "MCP server"
    default_auto_field = "django.db.models.BigAutoField"
