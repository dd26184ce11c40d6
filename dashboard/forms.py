"""The dashboard's forms: list filters, and a scaling rule as operators edit it inline."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from agents.models import Agent
from console.models import ModelPrice, User
from scaling.models import POLICY_FIELDS, ScalingRule

__all__ = ["AgentFilterForm", "AuditFilterForm", "DecisionFilterForm", "ScalingRuleForm"]


class AgentFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *Agent.Status.choices])
    model = forms.CharField(required=False, max_length=100)
    owner = forms.CharField(required=False, max_length=150)
    q = forms.CharField(required=False, max_length=100, label="Search")
    page = forms.IntegerField(required=False, min_value=1)

    def filters(self) -> dict[str, Any]:
        """The valid filters, for the selector (an invalid one is ignored)."""
        data = self.cleaned_data if self.is_valid() else {}
        return {name: data.get(name) or None for name in ("status", "model", "owner", "q")}


class DecisionFilterForm(forms.Form):
    rule = forms.IntegerField(required=False, min_value=1)
    page = forms.IntegerField(required=False, min_value=1)


class AuditFilterForm(forms.Form):
    actor = forms.IntegerField(required=False, min_value=1)
    action = forms.CharField(required=False, max_length=60)
    target_type = forms.CharField(required=False, max_length=60)
    cursor = forms.CharField(required=False, max_length=100)


class ScalingRuleForm(forms.ModelForm):
    """Every setting of a rule. Validation is the model's own: its fields' validators,
    ``ScalingRule.clean`` and its constraints (one rule per pool among them). The pool's owner
    is typed as a username, so the form never lists every account."""

    owner = forms.ModelChoiceField(
        queryset=User.objects.all(),
        to_field_name="username",
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "the autoscaler's account"}),
        help_text="The account that owns the pool's agents; empty: the console's own.",
        error_messages={"invalid_choice": "There is no account with this username."},
    )

    class Meta:
        model = ScalingRule
        fields = [
            "name",
            "owner",
            "model",
            "system_prompt",
            *POLICY_FIELDS,
            "enabled",
        ]
        widgets = {"system_prompt": forms.Textarea(attrs={"rows": 2})}
        # Short labels: each sits in a section that says which direction it is about.
        labels = {
            "target_sessions_per_agent": "Sessions per agent",
            "scale_up_threshold": "Grow above",
            "scale_down_threshold": "Shrink below",
            "evaluation_interval_seconds": "Evaluate every (s)",
            "warm_pool_size": "Warm agents",
            "scale_up_cooldown_seconds": "Cooldown (s)",
            "scale_up_max_step": "Largest step",
            "scale_up_step_unit": "Step in",
            "scale_up_period_seconds": "Per period (s)",
            "scale_down_cooldown_seconds": "Cooldown (s)",
            "scale_down_max_step": "Largest step",
            "scale_down_step_unit": "Step in",
            "scale_down_period_seconds": "Per period (s)",
            "on_metrics_failure": "When metrics fail",
            "predictive": "Predictive",
            "predictive_window_minutes": "Forecast window (min)",
        }

    # A new rule starts small: one agent ready, room for twenty (the model's defaults, 10 and
    # 1000, are for rules made in code, and a form would boot ten agents on its first save).
    NEW_RULE_INITIAL = {"min_agents": 1, "max_agents": 20}

    model = forms.ChoiceField(
        choices=(), help_text="The Claude model the pool's agents run: one with a price."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        instance = kwargs.get("instance")
        if instance is None or instance.pk is None:
            kwargs["initial"] = {
                "model": settings.DEFAULT_AGENT_MODEL,
                **self.NEW_RULE_INITIAL,
                **(kwargs.get("initial") or {}),
            }
        super().__init__(*args, **kwargs)
        if self.instance.owner_id is not None:  # shown by username, not by id
            self.initial["owner"] = self.instance.owner.username
        self.fields["model"].choices = [(m, m) for m in self._models()]
        for direction in ("up", "down"):
            self.fields[f"scale_{direction}_step_unit"].choices = [
                ("percent", "% of the count"),
                ("agents", "agents"),
            ]

    def _models(self) -> list[str]:
        """The priced models (newest name first), the default, and the rule's own."""
        priced = ModelPrice.objects.values_list("model", flat=True).distinct().order_by("-model")
        models = [settings.DEFAULT_AGENT_MODEL, *priced]
        if self.instance.model:
            models.insert(0, self.instance.model)
        return list(dict.fromkeys(models))

    def boot_count(self) -> int:
        """The agents the autoscaler boots for this rule at its first evaluation, with no load:
        its minimum, or its warm pool if larger (0 while paused)."""
        value = self.data if self.is_bound else self.initial

        def number(name: str, default: int) -> int:
            raw = value.get(name, getattr(self.instance, name, default))
            try:
                return max(0, int(raw))
            except (TypeError, ValueError):
                return default

        enabled = (
            value.get("enabled", self.instance.enabled)
            if not self.is_bound
            else bool(value.get("enabled"))
        )
        if not enabled:
            return 0
        low, warm = number("min_agents", 0), number("warm_pool_size", 0)
        return min(max(low, warm), number("max_agents", max(low, warm)))

    # How the edit form groups the settings.
    SECTIONS = [
        ("Pool", ["name", "owner", "model", "system_prompt"]),
        (
            "Size and load",
            [
                "min_agents",
                "max_agents",
                "target_sessions_per_agent",
                "scale_up_threshold",
                "scale_down_threshold",
                "evaluation_interval_seconds",
                "warm_pool_size",
            ],
        ),
        (
            "Scaling up",
            [
                "scale_up_cooldown_seconds",
                "scale_up_max_step",
                "scale_up_step_unit",
                "scale_up_period_seconds",
            ],
        ),
        (
            "Scaling down",
            [
                "scale_down_cooldown_seconds",
                "scale_down_max_step",
                "scale_down_step_unit",
                "scale_down_period_seconds",
            ],
        ),
        (
            "Failures and forecasting",
            [
                "on_metrics_failure",
                "fallback_agents",
                "predictive",
                "predictive_window_minutes",
                "enabled",
            ],
        ),
    ]

    def sections(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [(title, [self[name] for name in names]) for title, names in self.SECTIONS]

    def changed_values(self) -> dict[str, Any]:
        """The settings the operator changed, for the update service."""
        return {name: self.cleaned_data[name] for name in self.changed_data}

    def values(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.Meta.fields}


class SimulationForm(forms.Form):
    """The load to replay through a rule: a built-in shape between two session counts, or a
    CSV of ``seconds,sessions`` rows."""

    SHAPES = [
        ("daily", "Daily cycle (24 h)"),
        ("ramp", "Ramp (1 h)"),
        ("spike", "Spike (1 h)"),
        ("csv", "CSV trace"),
    ]

    shape = forms.ChoiceField(choices=SHAPES, initial="daily", label="Load")
    low = forms.IntegerField(min_value=0, max_value=10_000_000, label="From (sessions)")
    high = forms.IntegerField(min_value=0, max_value=10_000_000, label="To (sessions)")
    csv = forms.CharField(
        required=False,
        max_length=400_000,
        label="CSV trace",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "seconds,sessions\n0,120\n60,340"}),
        help_text="One row per time: seconds,sessions.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        kwargs.setdefault("prefix", "sim")
        super().__init__(*args, **kwargs)

    @staticmethod
    def initial_for(rule: ScalingRule) -> dict[str, Any]:
        """A load that exercises the rule: from a tenth of to most of its largest pool's
        capacity."""
        capacity = (rule.max_agents or 1) * (rule.target_sessions_per_agent or 1)
        high = max(10, min(capacity * 7 // 10, 1_000_000))
        return {"shape": "daily", "low": max(1, high // 10), "high": high}

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("shape") == "csv" and not (data.get("csv") or "").strip():
            self.add_error("csv", "Paste the trace's rows, or pick a built-in load.")
        return data
