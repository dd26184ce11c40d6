"""Scaling rules, one per agent pool, and the decisions the autoscaler takes under them.

A pool is the agents of one template: a model and a system prompt. Its rule bounds how many
agents it runs, the load each should carry, and how fast the count may move, in the manner of a
Kubernetes HorizontalPodAutoscaler's ``behavior``: a stabilization window (cooldown) and a
largest step per period, in each direction. The policy that applies a rule is a pure function
(``scaling.policy``); each of its evaluations is kept as a ``ScalingDecision``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import MD5
from django.utils import timezone

__all__ = [
    "AUTOSCALER_ACCOUNT",
    "MAX_PERCENT_STEP",
    "POLICY_FIELDS",
    "ScalingDecision",
    "ScalingRule",
]

# The username of the account that owns the pools of rules naming no owner.
AUTOSCALER_ACCOUNT = "autoscaler"

# Beat looks for due rules every few seconds; a rule a little early is due rather than late.
_DUE_SLACK_SECONDS = 1.0

# A percent step above this is a typo rather than a policy: 1000 % already grows a pool
# elevenfold in one period.
MAX_PERCENT_STEP = 1000

_RATIO = [MinValueValidator(Decimal("0.001")), MaxValueValidator(Decimal(1))]
_AT_LEAST_ONE = [MinValueValidator(1)]


def _ratio_field(default: str, help_text: str) -> models.DecimalField:
    return models.DecimalField(
        max_digits=4,
        decimal_places=3,
        default=Decimal(default),
        validators=_RATIO,
        help_text=help_text,
    )


# What a rule decides with (the pool and its name apart): every form, serializer and simulation
# of a rule takes these.
POLICY_FIELDS = (
    "min_agents",
    "max_agents",
    "target_sessions_per_agent",
    "scale_up_threshold",
    "scale_down_threshold",
    "evaluation_interval_seconds",
    "scale_up_cooldown_seconds",
    "scale_up_max_step",
    "scale_up_step_unit",
    "scale_up_period_seconds",
    "scale_down_cooldown_seconds",
    "scale_down_max_step",
    "scale_down_step_unit",
    "scale_down_period_seconds",
    "warm_pool_size",
    "on_metrics_failure",
    "fallback_agents",
    "predictive",
    "predictive_window_minutes",
)


class ScalingRule(models.Model):
    """How one agent pool (a model and a system prompt) grows and shrinks with its load.

    Utilization is open sessions over ``current agents * target_sessions_per_agent``: above
    ``scale_up_threshold`` the pool grows, below ``scale_down_threshold`` it shrinks, always
    within ``[min_agents, max_agents]`` (``min_agents`` 0: the pool may scale to zero; a
    request waiting for one of its agents wakes it). A move waits out its direction's cooldown
    since the last one and is at most its ``max_step`` (agents, or percent of the current count)
    per ``period_seconds``. ``warm_pool_size`` agents are kept booted beyond the demand, within
    ``max_agents``. When the load cannot be read, the pool keeps its size (``keep``) or goes to
    ``fallback_agents`` (``fixed``).
    """

    class StepUnit(models.TextChoices):
        AGENTS = "agents", "Agents"
        PERCENT = "percent", "Percent of the current count"

    class OnMetricsFailure(models.TextChoices):
        KEEP = "keep", "Keep the current count"
        FIXED = "fixed", "Go to the fallback count"

    name = models.CharField(max_length=100, unique=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The account whose agents of this template form the pool: it owns the agents "
        "spawned for it, under its quota, and its sessions are spread over them. Empty: the "
        "console's own autoscaler account.",
    )
    model = models.CharField(max_length=100, help_text="The Claude model the pool's agents run.")
    system_prompt = models.TextField(blank=True, help_text="The pool's system-prompt template.")

    min_agents = models.PositiveIntegerField(default=10, help_text="0: the pool may scale to zero.")
    max_agents = models.PositiveIntegerField(default=1000, validators=_AT_LEAST_ONE)
    target_sessions_per_agent = models.PositiveIntegerField(default=100, validators=_AT_LEAST_ONE)
    scale_up_threshold = _ratio_field("0.80", "Grow above this utilization, in (0, 1].")
    scale_down_threshold = _ratio_field(
        "0.30", "Shrink below this utilization; lower than the scale-up threshold."
    )
    evaluation_interval_seconds = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(5)]
    )

    scale_up_cooldown_seconds = models.PositiveIntegerField(
        default=120, help_text="Stabilization window: no growth sooner after the last move."
    )
    scale_up_max_step = models.PositiveIntegerField(default=100, validators=_AT_LEAST_ONE)
    scale_up_step_unit = models.CharField(
        max_length=8, choices=StepUnit.choices, default=StepUnit.PERCENT
    )
    scale_up_period_seconds = models.PositiveIntegerField(default=60, validators=_AT_LEAST_ONE)
    scale_down_cooldown_seconds = models.PositiveIntegerField(
        default=300, help_text="Stabilization window: no shrinking sooner after the last move."
    )
    scale_down_max_step = models.PositiveIntegerField(default=10, validators=_AT_LEAST_ONE)
    scale_down_step_unit = models.CharField(
        max_length=8, choices=StepUnit.choices, default=StepUnit.PERCENT
    )
    scale_down_period_seconds = models.PositiveIntegerField(default=60, validators=_AT_LEAST_ONE)

    warm_pool_size = models.PositiveIntegerField(
        default=0, help_text="Idle agents kept booted ahead of demand, within max_agents."
    )
    on_metrics_failure = models.CharField(
        max_length=8, choices=OnMetricsFailure.choices, default=OnMetricsFailure.KEEP
    )
    fallback_agents = models.PositiveIntegerField(
        null=True, blank=True, help_text="The count to hold while metrics fail, when fixed."
    )
    predictive = models.BooleanField(
        default=False, help_text="Also scale ahead of the load forecast from recent history."
    )
    predictive_window_minutes = models.PositiveIntegerField(default=30, validators=_AT_LEAST_ONE)
    enabled = models.BooleanField(default=True, help_text="A paused rule is not evaluated.")
    last_evaluated_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When beat last evaluated the rule."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(min_agents__lte=F("max_agents")),
                name="scaling_rule_min_within_max",
                violation_error_message="min_agents must not exceed max_agents.",
            ),
            models.CheckConstraint(
                condition=Q(scale_down_threshold__lt=F("scale_up_threshold")),
                name="scaling_rule_thresholds_ordered",
                violation_error_message="scale_down_threshold must be below scale_up_threshold.",
            ),
            models.CheckConstraint(
                condition=Q(scale_down_threshold__gt=0, scale_up_threshold__lte=1),
                name="scaling_rule_thresholds_in_range",
                violation_error_message="Thresholds are utilizations in (0, 1].",
            ),
            models.CheckConstraint(
                condition=Q(on_metrics_failure="keep", fallback_agents__isnull=True)
                | Q(on_metrics_failure="fixed", fallback_agents__isnull=False),
                name="scaling_rule_fallback_iff_fixed",
                violation_error_message="fallback_agents is set exactly when the failure "
                "behaviour is fixed.",
            ),
            # Two rules steering one pool would undo each other's moves. A system prompt may be
            # longer than an index entry allows, so the key holds its digest.
            models.UniqueConstraint(
                "model",
                MD5("system_prompt"),
                name="scaling_rule_one_per_pool",
                violation_error_message="Another rule already scales this pool "
                "(the same model and system prompt).",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def is_due(self, now: datetime) -> bool:
        """Whether its evaluation interval has passed since its last evaluation."""
        last = self.last_evaluated_at
        if last is None:
            return True
        elapsed = (now - last).total_seconds()
        return elapsed >= self.evaluation_interval_seconds - _DUE_SLACK_SECONDS

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.min_agents is not None and self.max_agents is not None:
            if self.min_agents > self.max_agents:
                errors["min_agents"] = f"must not exceed max_agents ({self.max_agents})."
            if self.warm_pool_size is not None and self.warm_pool_size > self.max_agents:
                errors["warm_pool_size"] = f"must not exceed max_agents ({self.max_agents})."
        up, down = self.scale_up_threshold, self.scale_down_threshold
        if up is not None and down is not None and down >= up:
            errors["scale_down_threshold"] = f"must be below scale_up_threshold ({up})."
        for direction in ("up", "down"):
            step = getattr(self, f"scale_{direction}_max_step")
            unit = getattr(self, f"scale_{direction}_step_unit")
            if unit == self.StepUnit.PERCENT and step is not None and step > MAX_PERCENT_STEP:
                errors[f"scale_{direction}_max_step"] = (
                    f"a percent step is at most {MAX_PERCENT_STEP}."
                )
        errors.update(self._fallback_errors())
        if errors:
            raise ValidationError(errors)

    def _fallback_errors(self) -> dict[str, str]:
        fallback = self.fallback_agents
        if self.on_metrics_failure != self.OnMetricsFailure.FIXED:
            if fallback is not None:
                return {"fallback_agents": "is only used when on_metrics_failure is fixed."}
            return {}
        if fallback is None:
            return {"fallback_agents": "is required when on_metrics_failure is fixed."}
        low, high = self.min_agents, self.max_agents
        if low is not None and high is not None and not low <= fallback <= high:
            return {"fallback_agents": f"must be within {low} and {high} (min and max agents)."}
        return {}


class ScalingDecision(models.Model):
    """One evaluation of a rule: what the policy saw, the count it chose, and why.

    ``observed_sessions`` and ``utilization`` are empty when the metrics could not be read;
    ``metrics_error`` then says what failed. ``inputs`` holds everything the policy was given,
    so that a decision can be replayed.
    """

    class Action(models.TextChoices):
        SCALE_UP = "scale_up", "Scale up"
        SCALE_DOWN = "scale_down", "Scale down"
        HOLD = "hold", "Hold"

    rule = models.ForeignKey(ScalingRule, on_delete=models.CASCADE, related_name="decisions")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    current_agents = models.PositiveIntegerField()
    desired_agents = models.PositiveIntegerField()
    recommended_agents = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="What the load alone called for, before cooldowns, step limits and bounds.",
    )
    observed_sessions = models.PositiveIntegerField(null=True, blank=True)
    utilization = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Sessions over current agents * target sessions per agent.",
    )
    action = models.CharField(max_length=10, choices=Action.choices)
    reason = models.TextField(help_text="Why, in plain words.")
    inputs = models.JSONField(default=dict, help_text="Everything the policy was given.")
    metrics_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["rule", "created_at"], name="scaling_decision_rule_at")]

    def __str__(self) -> str:
        return f"{self.action} {self.current_agents}→{self.desired_agents} ({self.rule_id})"
