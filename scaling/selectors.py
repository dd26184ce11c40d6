"""Reads of scaling rules and decisions, for the API and the dashboard."""

from __future__ import annotations

from django.db.models import QuerySet

from scaling.models import ScalingDecision, ScalingRule

__all__ = ["scaling_decision_list", "scaling_rule_list"]


def scaling_rule_list(*, enabled: bool | None = None, model: str | None = None) -> QuerySet:
    """Rules, those ``enabled`` (or paused) only and of one ``model`` when given."""
    rules = ScalingRule.objects.all()
    if enabled is not None:
        rules = rules.filter(enabled=enabled)
    if model is not None:
        rules = rules.filter(model=model)
    return rules


def scaling_decision_list(*, rule_id: int | None = None, action: str | None = None) -> QuerySet:
    """Decisions, newest first, of one rule and with one action when given; the
    ``(rule, created_at)`` index serves one rule's history."""
    decisions = ScalingDecision.objects.order_by("-created_at")
    if rule_id is not None:
        decisions = decisions.filter(rule_id=rule_id)
    if action is not None:
        decisions = decisions.filter(action=action)
    return decisions
