"""Reads of scaling rules and decisions, for the API and the dashboard, and of the running
agents as Prometheus discovers them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet
from django.db.models.functions import MD5
from django.utils import timezone

from agents.models import Agent
from scaling.models import AUTOSCALER_ACCOUNT, ScalingDecision, ScalingRule

__all__ = [
    "ScrapeTarget",
    "agent_scrape_targets",
    "scaling_decision_list",
    "scaling_rule_list",
    "scaling_rules_due",
]


def scaling_rule_list(*, enabled: bool | None = None, model: str | None = None) -> QuerySet:
    """Rules, those ``enabled`` (or paused) only and of one ``model`` when given."""
    rules = ScalingRule.objects.all()
    if enabled is not None:
        rules = rules.filter(enabled=enabled)
    if model is not None:
        rules = rules.filter(model=model)
    return rules


def scaling_rules_due(*, now: datetime | None = None) -> list[int]:
    """The ids of the enabled rules whose interval has passed since their last evaluation."""
    now = now or timezone.now()
    rules = ScalingRule.objects.filter(enabled=True).only(
        "pk", "evaluation_interval_seconds", "last_evaluated_at"
    )
    return [rule.pk for rule in rules if rule.is_due(now)]


def scaling_decision_list(*, rule_id: int | None = None, action: str | None = None) -> QuerySet:
    """Decisions, newest first, of one rule and with one action when given; the
    ``(rule, created_at)`` index serves one rule's history."""
    decisions = ScalingDecision.objects.order_by("-created_at")
    if rule_id is not None:
        decisions = decisions.filter(rule_id=rule_id)
    if action is not None:
        decisions = decisions.filter(action=action)
    return decisions


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """A running agent as Prometheus scrapes it: its ``pool`` is the name of the scaling rule
    whose pool it is in, "" when none."""

    agent_id: uuid.UUID
    model: str
    owner: str
    pool: str


def agent_scrape_targets() -> list[ScrapeTarget]:
    """Every running agent (draining ones too: their sessions are their pool's load), oldest
    first, with its pool; two queries however many agents and rules there are.

    A rule's pool is its owner's agents of its template, the autoscaler's account standing for
    a rule that names no owner; a template is matched on the model and the system prompt's
    digest, as the rules' one-rule-per-pool constraint matches it, so no prompt is read."""
    rules = {
        (model, digest): (name, owner_id)
        for name, owner_id, model, digest in ScalingRule.objects.annotate(
            digest=MD5("system_prompt")
        )
        .values_list("name", "owner_id", "model", "digest")
        .order_by()
    }
    agents = (
        Agent.objects.filter(deleted_at__isnull=True, status=Agent.Status.RUNNING)
        .exclude(endpoint="")
        .annotate(digest=MD5("system_prompt"))
        .values_list("id", "model", "digest", "owner_id", "owner__username")
        .order_by("created_at", "id")
    )
    targets = []
    for agent_id, model, digest, owner_id, username in agents:
        name, rule_owner_id = rules.get((model, digest), ("", None))
        mine = owner_id == rule_owner_id or (
            rule_owner_id is None and username == AUTOSCALER_ACCOUNT
        )
        targets.append(ScrapeTarget(agent_id, model, username, name if mine else ""))
    return targets
