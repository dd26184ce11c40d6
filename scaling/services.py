"""Operators' changes to scaling rules, each recorded in the audit log with the values before
and after. The rules' invariants are checked before these are called (``ScalingRule.clean`` via
the API's serializers and the admin's forms); the database's constraints hold the rest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.utils import timezone

from console.models import User
from console.services import audit_record, audited_delete, audited_save
from scaling.models import ScalingRule

__all__ = [
    "scaling_rule_create",
    "scaling_rule_delete",
    "scaling_rule_set_enabled",
    "scaling_rule_update",
]

# What an operator sets on a rule, and what its audit entries show.
_SETTINGS = [f.name for f in ScalingRule._meta.concrete_fields if f.editable and not f.primary_key]


def scaling_rule_create(*, actor: User | None, values: Mapping[str, Any]) -> ScalingRule:
    """A new rule from ``values`` (the rest at their defaults); its audit entry shows every
    setting it starts with."""
    rule = ScalingRule(**values)
    audited_save(instance=rule, fields=_SETTINGS, actor=actor)
    return rule


def scaling_rule_update(
    *, rule: ScalingRule, values: Mapping[str, Any], actor: User | None
) -> ScalingRule:
    """Change the settings in ``values``; only those that differ are written and recorded."""
    for field, value in values.items():
        setattr(rule, field, value)
    audited_save(instance=rule, fields=values, actor=actor)
    return rule


def scaling_rule_delete(*, rule: ScalingRule, actor: User | None) -> None:
    """Delete a rule and its decisions; the audit entry keeps the settings it had."""
    audited_delete(instance=rule, actor=actor)


def scaling_rule_set_enabled(
    *, rule: ScalingRule, enabled: bool, actor: User | None
) -> ScalingRule:
    """Enable (or pause) a rule. Already so: nothing is written or recorded. The conditional
    update makes two operators' concurrent clicks record one change, not two."""
    with transaction.atomic():
        changed = ScalingRule.objects.filter(pk=rule.pk, enabled=not enabled).update(
            enabled=enabled, updated_at=timezone.now()
        )
        if changed:
            audit_record(
                actor=actor,
                action="scalingrule.enable" if enabled else "scalingrule.pause",
                target=rule,
                changes={"enabled": (not enabled, enabled)},
            )
    rule.refresh_from_db(fields=["enabled", "updated_at"])
    return rule
