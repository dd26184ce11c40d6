from __future__ import annotations

from django.conf import settings
from django.db import models


class ToolCall(models.Model):
    """One call of an MCP tool (or read of a resource): who made it, with what arguments
    (secrets masked), how it ended and how long it took."""

    class Transport(models.TextChoices):
        HTTP = "http", "Streamable HTTP"
        STDIO = "stdio", "stdio"

    class Outcome(models.TextChoices):
        OK = "ok", "ok"
        ERROR = "error", "error"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "console.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    transport = models.CharField(max_length=8, choices=Transport.choices)
    tool = models.CharField(max_length=200, help_text="The tool's name, or the resource's URI.")
    arguments = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"], name="mcp_call_user")]

    def __str__(self) -> str:
        return f"{self.tool} by {self.user} ({self.outcome})"
