"""An operator agent as operators set it up."""

from __future__ import annotations

from django import forms
from django.conf import settings

from autopilot.loop import OPERATOR_TOOLS
from operator_agent.models import OperatorAgent

__all__ = ["OperatorAgentForm"]


def _tool_label(name: str) -> str:
    tool = OPERATOR_TOOLS[name]
    if tool.destructive:
        return f"{name}: {tool.title} (destructive: always waits for approval)"
    return f"{name}: {tool.title}"


class OperatorAgentForm(forms.ModelForm):
    """Every setting of an operator agent; the tools are the console's MCP tools but the
    approvals' own."""

    allowed_tools = forms.MultipleChoiceField(
        choices=[(name, _tool_label(name)) for name in OPERATOR_TOOLS],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="What it may call. Read-only tools are safe to give; the others act on the"
        " fleet.",
    )

    class Meta:
        model = OperatorAgent
        fields = [
            "name",
            "model",
            "instructions",
            "every_minutes",
            "enabled",
            "daily_usd_cap",
            "tool_calls_per_minute",
            "spawn_approval_over",
            "cost_approval_over_usd_per_hour",
            "allowed_tools",
        ]
        widgets = {"instructions": forms.Textarea(attrs={"rows": 5})}
        labels = {
            "every_minutes": "Every (minutes)",
            "daily_usd_cap": "Daily cap (USD)",
            "spawn_approval_over": "Spawns without approval",
            "cost_approval_over_usd_per_hour": "Approval above (USD/hour)",
        }

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if not self.instance.pk:
            self.fields["model"].initial = settings.DEFAULT_AGENT_MODEL
