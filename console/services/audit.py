"""Operator actions, each recorded in the audit log: who did what to which row, when, and the
values before and after.

Edits to a user's limits (quota, budgets, API keys) take the user's quota row lock, as admission
does (see ``console.services.limits``), so an edit never interleaves with a check, and they
write only the fields the operator changed: a budget's ``used`` and ``reserved``, which the
gateway moves meanwhile, are never written back stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from django.db import models, transaction
from django.utils import timezone

from console.models import ApiKey, AuditEvent, Budget, Quota, User
from console.services.accounts import api_key_revoke, quota_set_suspended

__all__ = [
    "api_keys_revoke",
    "audit_record",
    "audited_delete",
    "audited_save",
    "audited_update",
    "budgets_reset",
    "model_changes",
    "users_set_suspended",
]

Changes = Mapping[str, tuple[Any, Any]]
M = TypeVar("M", bound=models.Model)


def _json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it: exact decimals and instants become strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return f"{value.normalize():f}"  # "20", not "20.00000000" or "2E+1"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value.total_seconds())
    if isinstance(value, models.Model):
        return _json_safe(value.pk)
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(item) for item in value]
    return str(value)  # a UUID, a file name, an enum


def _describe(target: models.Model) -> str:
    if isinstance(target, Budget):  # its own name leaves out whose it is
        return f"Budget of {target.user}: {target}"
    return str(target)


def audit_record(
    *,
    actor: User | None,
    action: str,
    target: models.Model,
    changes: Changes | None = None,
) -> AuditEvent:
    """Record that ``actor`` (None: the system) did ``action`` to ``target``; ``changes`` maps
    each field to its (old, new) values."""
    return AuditEvent.objects.create(
        actor=actor,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        target_repr=_describe(target)[:200],
        changes={
            field: [_json_safe(old), _json_safe(new)]
            for field, (old, new) in (changes or {}).items()
        },
    )


def model_changes(
    before: models.Model | None, after: models.Model | None, fields: Iterable[str]
) -> dict[str, tuple[Any, Any]]:
    """The ``fields`` whose values differ between two states of a row, as {field: (old, new)};
    a missing state (a row created or deleted) has no values. A foreign key compares by id."""
    changes = {}
    for name in fields:
        model = type(after if after is not None else before)
        attname = model._meta.get_field(name).attname
        old = getattr(before, attname) if before is not None else None
        new = getattr(after, attname) if after is not None else None
        if old != new:
            changes[name] = (old, new)
    return changes


def _action(instance: models.Model, verb: str) -> str:
    return f"{instance._meta.model_name}.{verb}"


def _lock_owner(instance: models.Model) -> None:
    """Hold the owner's quota row lock, when the row belongs to a user."""
    user_id = getattr(instance, "user_id", None)
    if user_id is not None:
        Quota.objects.select_for_update().filter(user_id=user_id).first()


def _auto_now(model: type[models.Model]) -> list[str]:
    return [f.name for f in model._meta.concrete_fields if getattr(f, "auto_now", False)]


def audited_save(
    *, instance: models.Model, fields: Iterable[str], actor: User | None
) -> AuditEvent | None:
    """Save an operator's edit of ``fields`` of ``instance`` (a new row: all of it), recording
    what changed against the database. Nothing changed: nothing is written or recorded."""
    fields = list(fields)
    with transaction.atomic():
        _lock_owner(instance)
        if instance._state.adding:
            instance.save()
            changes = model_changes(None, instance, fields)
            return audit_record(
                actor=actor, action=_action(instance, "create"), target=instance, changes=changes
            )
        before = type(instance)._default_manager.filter(pk=instance.pk).first()
        if before is None:  # deleted meanwhile: nothing left to change
            return None
        changes = model_changes(before, instance, fields)
        if not changes:
            return None
        instance.save(update_fields=[*changes, *_auto_now(type(instance))])
        return audit_record(
            actor=actor, action=_action(instance, "change"), target=instance, changes=changes
        )


def audited_update(*, instance: M, values: Mapping[str, Any], actor: User | None) -> M:
    """An operator's change of ``values`` on ``instance``: the fields that differ are written
    and recorded (``audited_save``)."""
    for field, value in values.items():
        setattr(instance, field, value)
    audited_save(instance=instance, fields=values, actor=actor)
    return instance


def audited_delete(*, instance: models.Model, actor: User | None) -> AuditEvent:
    """Delete ``instance``, recording the values it had."""
    fields = [f.name for f in instance._meta.concrete_fields if not f.primary_key]
    with transaction.atomic():
        _lock_owner(instance)
        event = audit_record(
            actor=actor,
            action=_action(instance, "delete"),
            target=instance,
            changes=model_changes(instance, None, fields),
        )
        instance.delete()
    return event


def budgets_reset(*, budget_ids: Iterable[int], actor: User | None) -> int:
    """Start a new window now, with nothing used, for each calendar budget of ``budget_ids``;
    return how many were reset.

    ``reserved`` is kept: calls in flight are still owed, and settle into the new window. A
    rolling budget is skipped: its use is counted afresh from the hourly ledger of its last hours
    at each admission, so there is no window to restart (raise its limit instead).
    """
    now = timezone.now()
    budgets = Budget.objects.filter(pk__in=list(budget_ids)).exclude(window=Budget.Window.ROLLING)
    reset = 0
    for user_id in sorted(set(budgets.values_list("user_id", flat=True))):
        with transaction.atomic():
            Quota.objects.get_or_create(user_id=user_id)
            Quota.objects.select_for_update().get(user_id=user_id)
            for budget in budgets.filter(user_id=user_id):  # re-read under the lock
                changes = {
                    "used": (budget.used, Decimal(0)),
                    "window_started_at": (budget.window_started_at, now),
                }
                Budget.objects.filter(pk=budget.pk).update(used=0, window_started_at=now)
                audit_record(actor=actor, action="budget.reset", target=budget, changes=changes)
                reset += 1
    return reset


def users_set_suspended(*, user_ids: Iterable[int], suspended: bool, actor: User | None) -> int:
    """Suspend (or lift the suspension of) users, recording each quota whose state changed;
    return how many were selected."""
    user_ids = list(user_ids)
    action = "quota.suspend" if suspended else "quota.unsuspend"
    with transaction.atomic():
        was = dict(
            Quota.objects.select_for_update()
            .filter(user_id__in=user_ids)
            .values_list("user_id", "is_suspended")
        )
        count = quota_set_suspended(user_ids=user_ids, suspended=suspended)
        for quota in Quota.objects.filter(user_id__in=user_ids).select_related("user"):
            old = was.get(quota.user_id, Quota._meta.get_field("is_suspended").default)
            if old != suspended:
                audit_record(
                    actor=actor,
                    action=action,
                    target=quota,
                    changes={"is_suspended": (old, suspended)},
                )
    return count


def api_keys_revoke(*, key_ids: Iterable[int], actor: User | None) -> int:
    """Revoke keys, recording each one that was still live; return how many were."""
    revoked = 0
    with transaction.atomic():
        keys = ApiKey.objects.select_for_update().filter(pk__in=list(key_ids), revoked_at=None)
        for key in keys:
            api_key_revoke(key=key)
            key.refresh_from_db(fields=["revoked_at"])
            audit_record(
                actor=actor,
                action="apikey.revoke",
                target=key,
                changes={"revoked_at": (None, key.revoked_at)},
            )
            revoked += 1
    return revoked
