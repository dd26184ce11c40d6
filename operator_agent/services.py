"""Operator agents' services: create and change them (with their service account and its daily
budget), start runs, record what runs do, and take people's decisions on the calls that wait
for one. Every action and decision is also in the console's audit log.

A run is carried on by ``autopilot.tasks.operator_run_continue``, which these services queue by
name once their transaction commits (the task calls back into them).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone
from django.utils.text import slugify

from agents.services.queued import PUBLISH_RETRY, worker_task
from console.models import Budget, UsageRecord, User
from console.services import audit_record, audited_update, ledger_sql
from operator_agent.models import OperatorAction, OperatorAgent, OperatorRun
from plumbing.errors import Conflict, NotFound, RateLimited

__all__ = [
    "CONTINUE_TASK",
    "operator_action_decide",
    "operator_action_done",
    "operator_action_record",
    "operator_actions_expire",
    "operator_agent_create",
    "operator_agent_update",
    "operator_run_claim",
    "operator_run_finish",
    "operator_run_save",
    "operator_run_start",
    "operator_runs_reap",
    "operator_tool_call_admit",
]

CONTINUE_TASK = "autopilot.tasks.operator_run_continue"

# What an operator sets on an agent (the service account, run times and creator are the
# console's to keep).
AGENT_FIELDS = (
    "name",
    "instructions",
    "model",
    "every_minutes",
    "enabled",
    "daily_usd_cap",
    "tool_calls_per_minute",
    "allowed_tools",
    "spawn_approval_over",
    "cost_approval_over_usd_per_hour",
)


def _queue_continue(run_id: int) -> None:
    transaction.on_commit(
        lambda: worker_task(CONTINUE_TASK).apply_async((run_id,), retry_policy=PUBLISH_RETRY)
    )


def _service_account(name: str, *, admin: bool) -> User:
    base = f"operator-{slugify(name)[:100] or 'agent'}"
    username = base
    while User.objects.filter(username=username).exists():
        username = f"{base}-{secrets.token_hex(3)}"
    account = User(username=username, is_staff=admin)
    account.set_unusable_password()
    account.save()
    return account


def operator_agent_create(
    *, values: Mapping[str, Any], admin: bool, actor: User | None
) -> OperatorAgent:
    """Create an operator agent with its service account (staff when ``admin``: one of its
    tools is for operators) and a daily USD budget of its cap on that account."""
    with transaction.atomic():
        account = _service_account(str(values["name"]), admin=admin)
        agent = OperatorAgent.objects.create(
            user=account, created_by=actor, **{k: values[k] for k in AGENT_FIELDS if k in values}
        )
        Budget.objects.create(
            user=account,
            metric=Budget.Metric.USD,
            window=Budget.Window.DAY,
            limit=agent.daily_usd_cap,
        )
        audit_record(
            actor=actor,
            action="operatoragent.create",
            target=agent,
            changes={name: (None, getattr(agent, name)) for name in AGENT_FIELDS},
        )
    return agent


def _cap_budget(agent: OperatorAgent) -> Budget:
    budget = Budget.objects.filter(
        user_id=agent.user_id, metric=Budget.Metric.USD, window=Budget.Window.DAY
    ).first()
    if budget is None:  # removed in the admin: the cap is the agent's, so it comes back
        budget = Budget.objects.create(
            user_id=agent.user_id,
            metric=Budget.Metric.USD,
            window=Budget.Window.DAY,
            limit=agent.daily_usd_cap,
        )
    return budget


def operator_agent_update(
    *, agent: OperatorAgent, values: Mapping[str, Any], admin: bool, actor: User | None
) -> OperatorAgent:
    """Change an agent's settings (recorded in the audit log); its budget follows its cap, and
    its account is staff only while one of its tools needs it."""
    with transaction.atomic():
        audited_update(
            instance=agent,
            values={k: v for k, v in values.items() if k in AGENT_FIELDS},
            actor=actor,
        )
        audited_update(
            instance=_cap_budget(agent), values={"limit": agent.daily_usd_cap}, actor=actor
        )
        User.objects.filter(pk=agent.user_id).update(is_staff=admin)
    return agent


def operator_run_start(*, agent: OperatorAgent, trigger: str) -> OperatorRun:
    """Start a run of ``agent`` (``Conflict`` while one is in progress); the worker carries it
    on once this commits."""
    now = timezone.now()
    try:
        with transaction.atomic():
            run = OperatorRun.objects.create(agent=agent, trigger=trigger[:20], started_at=now)
            OperatorAgent.objects.filter(pk=agent.pk).update(last_run_at=now)
            audit_record(actor=None, action="operatorrun.start", target=run)
    except IntegrityError:
        raise Conflict(
            f"{agent.name} has a run in progress", details={"operator_agent": agent.pk}
        ) from None
    agent.last_run_at = now
    _queue_continue(run.pk)
    return run


def operator_run_claim(*, run_id: int, opening: list[Any]) -> OperatorRun | None:
    """Take ``run_id`` to carry on: a run just started (its conversation begins with
    ``opening``), or one whose every call waiting for approval has been decided. None: nothing
    to do (a redelivery, a call still pending, another worker on it)."""
    with transaction.atomic():
        run = (
            OperatorRun.objects.select_for_update()
            .select_related("agent__user")
            .filter(pk=run_id, status__in=OperatorRun.IN_PROGRESS)
            .first()
        )
        if run is None or run.actions.filter(status=OperatorAction.Status.PENDING).exists():
            return None
        fresh = run.status == OperatorRun.Status.RUNNING and not run.messages
        if run.status == OperatorRun.Status.RUNNING and not fresh:
            return None  # another worker holds it
        if not fresh and not run.messages:
            # Waiting for approvals with no conversation kept (a run made by hand, say):
            # there is nothing to carry on from.
            operator_run_finish(
                run=run,
                status=OperatorRun.Status.FAILED,
                summary="There is no conversation to carry on from: the run cannot continue.",
            )
            return None
        if fresh:
            run.messages = opening
        run.status = OperatorRun.Status.RUNNING
        run.heartbeat_at = timezone.now()
        run.save(update_fields=["status", "heartbeat_at", "messages"])
    return run


def operator_run_save(
    *, run: OperatorRun, messages: list[Any], waiting: bool = False
) -> OperatorRun:
    """Keep the run's conversation; ``waiting``: it now waits for approvals (and carries on at
    once if they were all decided meanwhile, while this run was still running)."""
    run.messages = messages
    run.heartbeat_at = timezone.now()
    with transaction.atomic():
        OperatorRun.objects.select_for_update().filter(pk=run.pk).first()
        if waiting:
            run.status = OperatorRun.Status.WAITING_APPROVAL
            _continue_when_decided(run.pk)
        run.save(update_fields=["messages", "heartbeat_at", "status"])
    return run


def _run_cost(run: OperatorRun, until: datetime) -> Decimal:
    # One run at a time per agent, so its account's calls in the run's span are the run's.
    spent = UsageRecord.objects.filter(
        user_id=run.agent.user_id, created_at__gte=run.started_at, created_at__lte=until
    ).aggregate(total=Sum("cost_usd"))["total"]
    return spent or Decimal(0)


def operator_run_finish(*, run: OperatorRun, status: str, summary: str) -> OperatorRun:
    """End the run with ``status`` and ``summary``, and what its calls to Claude cost."""
    now = timezone.now()
    run.status = status
    run.summary = summary[:10_000]
    run.ended_at = now
    run.cost_usd = _run_cost(run, now)
    run.save(update_fields=["status", "summary", "ended_at", "cost_usd", "messages"])
    audit_record(
        actor=None,
        action=f"operatorrun.{status}",
        target=run,
        changes={"status": (OperatorRun.Status.RUNNING, status), "cost_usd": (None, run.cost_usd)},
    )
    return run


def _audit_action(action: OperatorAction, actor: User | None, old: str | None) -> None:
    audit_record(
        actor=actor,
        action=f"operatoraction.{action.status}",
        target=action,
        changes={
            "status": (old, action.status),
            "tool": (None, action.tool),
            "arguments": (None, action.arguments),
        },
    )


def operator_tool_call_admit(*, agent: OperatorAgent) -> None:
    """Count a tool call against the agent's ``tool_calls_per_minute``; ``RateLimited`` (and
    not counted) past it. One statement holds the minute's counter row until commit, so
    workers running the same agent count one at a time."""
    now = timezone.now()
    minute = now.replace(second=0, microsecond=0)
    with transaction.atomic():
        calls, _ = ledger_sql.rate_bump(f"operator:{agent.pk}", minute, 0)
        if calls > agent.tool_calls_per_minute:
            resets_at = minute + timedelta(minutes=1)
            raise RateLimited(
                f"{agent.tool_calls_per_minute} tool calls a minute reached; the next minute"
                f" starts at {resets_at:%H:%M:%S} UTC",
                details={"limit": "tool_calls_per_minute", "value": agent.tool_calls_per_minute},
                retry_after=max(1, int((resets_at - now).total_seconds()) + 1),
            )


def operator_action_record(
    *,
    run: OperatorRun,
    tool_use_id: str,
    tool: str,
    arguments: dict[str, Any],
    reasoning: str,
    status: str,
    result: Any = None,
    cost_impact: Decimal = Decimal(0),
    approval_reason: str = "",
) -> OperatorAction:
    """Record a tool call of the run (as its account, in the audit log too); one waiting for
    approval expires after ``OPERATOR_APPROVAL_MINUTES``."""
    now = timezone.now()
    pending = status == OperatorAction.Status.PENDING
    with transaction.atomic():
        action = OperatorAction.objects.create(
            run=run,
            at=now,
            tool_use_id=tool_use_id[:100],
            tool=tool[:100],
            arguments=arguments,
            reasoning=reasoning,
            status=status,
            result=result,
            cost_impact_usd_per_hour=cost_impact,
            approval_reason=approval_reason[:200],
            expires_at=now + timedelta(minutes=settings.OPERATOR_APPROVAL_MINUTES)
            if pending
            else None,
        )
        _audit_action(action, run.agent.user, None)
    return action


def operator_action_done(*, action: OperatorAction, status: str, result: Any) -> OperatorAction:
    """An approved call ran: its outcome and result, in the audit log too."""
    old = action.status
    action.status = status
    action.result = result
    action.save(update_fields=["status", "result"])
    _audit_action(action, action.run.agent.user, old)
    return action


def operator_action_decide(*, action_id: int, approve: bool, actor: User) -> OperatorAction:
    """Approve or deny a call waiting for approval; once its run has no call left waiting, the
    run carries on. ``NotFound`` for no such call, ``Conflict`` once it is decided or expired."""
    status = OperatorAction.Status.APPROVED if approve else OperatorAction.Status.DENIED
    now = timezone.now()
    with transaction.atomic():
        action = (
            OperatorAction.objects.select_for_update()
            .select_related("run__agent")
            .filter(pk=action_id)
            .first()
        )
        if action is None:
            raise NotFound(f"no operator action {action_id}", details={"action_id": action_id})
        if action.status != OperatorAction.Status.PENDING:
            raise Conflict(
                f"this call is {action.get_status_display()}, not waiting for approval",
                details={"status": action.status},
            )
        expired = action.expires_at is not None and action.expires_at <= now
        if expired:  # kept as expired, then refused
            _expire(action, now)
        else:
            action.status = status
            action.decided_by = actor
            action.decided_at = now
            action.save(update_fields=["status", "decided_by", "decided_at"])
            _audit_action(action, actor, OperatorAction.Status.PENDING)
            _continue_when_decided(action.run_id)
    if expired:
        raise Conflict("this call's approval expired", details={"status": action.status})
    return action


def _expire(action: OperatorAction, now: datetime) -> None:
    action.status = OperatorAction.Status.EXPIRED
    action.decided_at = now
    action.save(update_fields=["status", "decided_at"])
    _audit_action(action, None, OperatorAction.Status.PENDING)
    _continue_when_decided(action.run_id)


def _continue_when_decided(run_id: int) -> None:
    if not OperatorAction.objects.filter(
        run_id=run_id, status=OperatorAction.Status.PENDING
    ).exists():
        _queue_continue(run_id)


def operator_actions_expire(*, now: datetime | None = None) -> int:
    """Expire every call whose approval was not given in time; their runs carry on without
    them. Returns how many expired."""
    now = now or timezone.now()
    expired = 0
    ids = OperatorAction.objects.filter(
        status=OperatorAction.Status.PENDING, expires_at__lte=now
    ).values_list("pk", flat=True)
    for action_id in list(ids):
        with transaction.atomic():
            action = (
                OperatorAction.objects.select_for_update()
                .filter(pk=action_id, status=OperatorAction.Status.PENDING)
                .first()
            )
            if action is not None:
                _expire(action, now)
                expired += 1
    return expired


def operator_runs_reap(*, now: datetime | None = None) -> int:
    """Fail the runs whose worker went away mid-way (no heartbeat for
    ``OPERATOR_RUN_STALE_SECONDS``), so that their agents can run again."""
    now = now or timezone.now()
    stale = OperatorRun.objects.filter(
        status=OperatorRun.Status.RUNNING,
        heartbeat_at__lt=now - timedelta(seconds=settings.OPERATOR_RUN_STALE_SECONDS),
    ).select_related("agent")
    reaped = 0
    for run in stale:
        operator_run_finish(
            run=run,
            status=OperatorRun.Status.FAILED,
            summary="The run's worker stopped answering; the run was ended.",
        )
        reaped += 1
    return reaped
