"""Operator agents, their runs, and every action a run took.

An operator agent acts as a service account of its own (``user``), whose daily USD budget is
the agent's cap: the gateway admits its calls to Claude against it, as it does anyone's, and
refuses them once it is spent.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

__all__ = ["OperatorAction", "OperatorAgent", "OperatorRun"]

_MONEY = {"max_digits": 12, "decimal_places": 4}


class OperatorAgent(models.Model):
    """An operator agent: its instructions and model, its schedule, its cap and rate limit, the
    console tools it may call, and which of its calls wait for a person's approval (every
    destructive tool's, always)."""

    name = models.CharField(max_length=100, unique=True)
    instructions = models.TextField(help_text="The system prompt of each run.")
    model = models.CharField(max_length=100)
    every_minutes = models.PositiveIntegerField(
        default=60,
        validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 60)],
        help_text="Beat starts a run this often while the agent is enabled.",
    )
    enabled = models.BooleanField(default=False)
    daily_usd_cap = models.DecimalField(
        **_MONEY,
        validators=[MinValueValidator(Decimal("0.0001"))],
        help_text="US dollars of Claude calls a day (UTC); past it, runs stop.",
    )
    tool_calls_per_minute = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(1000)]
    )
    allowed_tools = models.JSONField(default=list, blank=True, help_text="Tool names.")
    spawn_approval_over = models.PositiveIntegerField(
        default=0,
        help_text="A spawn past this many agents in one run waits for approval (0: every one).",
    )
    cost_approval_over_usd_per_hour = models.DecimalField(
        **_MONEY,
        default=Decimal("1"),
        validators=[MinValueValidator(Decimal(0))],
        help_text="A call whose estimated cost impact is above this (USD an hour) waits for"
        " approval.",
    )
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="operator_agent",
        help_text="The service account it acts as.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_run_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class OperatorRun(models.Model):
    """One run of an operator agent: its conversation with the model, how it ended and what its
    calls to Claude cost. An agent has one run in progress at most."""

    class Status(models.TextChoices):
        RUNNING = "running", "running"
        WAITING_APPROVAL = "waiting_approval", "waiting for approval"
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"
        STOPPED_BY_CAP = "stopped_by_cap", "stopped by its cap"

    IN_PROGRESS = (Status.RUNNING, Status.WAITING_APPROVAL)

    agent = models.ForeignKey(OperatorAgent, on_delete=models.CASCADE, related_name="runs")
    trigger = models.CharField(max_length=20, help_text="schedule, or who ran it now")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    summary = models.TextField(blank=True)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    messages = models.JSONField(default=list, help_text="The conversation so far.")

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent"],
                condition=Q(status__in=["running", "waiting_approval"]),
                name="operator_run_one_in_progress",
            )
        ]

    def __str__(self) -> str:
        return f"{self.agent} run {self.pk} ({self.status})"


class OperatorAction(models.Model):
    """One tool call a run asked for: when, which tool with what arguments, the model's stated
    reasoning, the result, its estimated cost impact, and (when it needed one) the decision."""

    class Status(models.TextChoices):
        EXECUTED = "executed", "executed"
        FAILED = "failed", "failed"
        REFUSED = "refused", "refused"
        PENDING = "pending_approval", "pending approval"
        APPROVED = "approved", "approved"
        DENIED = "denied", "denied"
        EXPIRED = "expired", "expired"

    run = models.ForeignKey(OperatorRun, on_delete=models.CASCADE, related_name="actions")
    at = models.DateTimeField(default=timezone.now)
    tool_use_id = models.CharField(max_length=100)
    tool = models.CharField(max_length=100)
    arguments = models.JSONField(default=dict, blank=True)
    reasoning = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=Status.choices)
    result = models.JSONField(null=True, blank=True)
    cost_impact_usd_per_hour = models.DecimalField(**_MONEY, default=Decimal(0))
    approval_reason = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["at", "pk"]
        indexes = [models.Index(fields=["status", "expires_at"], name="operator_action_pending")]

    def __str__(self) -> str:
        return f"{self.tool} ({self.status})"
