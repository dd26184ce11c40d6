"""Scaling rules and the autoscaler.

Operators' changes to rules are each recorded in the audit log with the values before and after.
The rules' invariants are checked before these are called (``ScalingRule.clean`` via the API's
serializers and the admin's forms); the database's constraints hold the rest.

The autoscaler evaluates rules in passes: ``scaling_evaluate`` claims the enabled rules that are
due, observes their pools (``scaling.metrics``), asks the policy (``scaling.policy.decide``) and
records each ``ScalingDecision``, in a fixed number of queries however many rules it takes;
``scaling_apply`` then carries a decision out on its pool: growth un-drains draining agents and
spawns the rest through ``agents.services.agent_spawn`` (the owner's quota and the hosts'
capacity apply); shrinking marks the least busy agents draining, and a draining agent is stopped
once it holds no open session, at this pass or a later one. ``scaling_wake`` answers a request
waiting for an owner's agent: it evaluates the owner's pool at once when the pool is at zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from agents.models import Agent, AgentDemand
from agents.services import agent_spawn, agent_stop
from console.models import User
from console.services import audit_record, audited_delete, audited_save, audited_update
from plumbing.errors import ConsoleError
from scaling import policy
from scaling.metrics import PoolKey, PoolReading, demand_waiting, pools_observe
from scaling.models import AUTOSCALER_ACCOUNT, ScalingDecision, ScalingRule

__all__ = [
    "scaling_apply",
    "scaling_evaluate",
    "scaling_rule_create",
    "scaling_rule_delete",
    "scaling_rule_evaluate",
    "scaling_rule_set_enabled",
    "scaling_rule_update",
    "scaling_wake",
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
    return audited_update(instance=rule, values=values, actor=actor)


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


# --- The autoscaler ------------------------------------------------------------------------------


def _autoscaler_account() -> User:
    account, _ = User.objects.get_or_create(
        username=AUTOSCALER_ACCOUNT, defaults={"is_active": False}
    )
    return account


def _claim(rule_ids: Sequence[int] | None, now: datetime, *, due: bool) -> list[ScalingRule]:
    """Lock the enabled rules among ``rule_ids`` (all when None), the due ones only when
    ``due``, and mark them evaluated now: a rule another pass holds is skipped, one evaluated
    meanwhile is no longer due."""
    with transaction.atomic():
        rules = ScalingRule.objects.select_for_update(skip_locked=True).filter(enabled=True)
        if rule_ids is not None:
            rules = rules.filter(pk__in=list(rule_ids))
        claimed = [rule for rule in rules if not due or rule.is_due(now)]
        if claimed:
            ScalingRule.objects.filter(pk__in=[r.pk for r in claimed]).update(last_evaluated_at=now)
    for rule in claimed:
        rule.last_evaluated_at = now
    return claimed


def _history(views: Mapping[int, policy.Rule], now: datetime) -> dict[int, list[policy.Past]]:
    """Each rule's decisions as far back as its policy looks, in one query."""
    spans = {rule_id: policy.history_span_seconds(view) for rule_id, view in views.items()}
    since = now - timedelta(seconds=max(spans.values()))
    rows = ScalingDecision.objects.filter(
        rule_id__in=list(spans), created_at__gte=since, created_at__lt=now
    ).values_list(
        "rule_id",
        "created_at",
        "current_agents",
        "desired_agents",
        "observed_sessions",
        "recommended_agents",
    )
    history: dict[int, list[policy.Past]] = defaultdict(list)
    for rule_id, at, agents, target, sessions, recommended in rows:
        if (now - at).total_seconds() <= spans[rule_id]:
            history[rule_id].append(policy.Past(at, agents, target, sessions, recommended))
    return history


def _inputs(
    rule: policy.Rule,
    reading: PoolReading,
    now: datetime,
    history: Sequence[policy.Past],
    decision: policy.Decision,
) -> dict[str, Any]:
    """Everything the policy was given (to replay the decision), and what limited it."""
    return {
        "now": now.isoformat(),
        "rule": rule.as_dict(),
        "observation": reading.as_inputs(),
        "history": [
            [p.at.isoformat(), p.agents, p.target, p.sessions, p.recommended]
            for p in sorted(history, key=lambda p: p.at)
        ],
        "forecast": decision.forecast,
        "limits": list(decision.limits),
    }


def _pool_key(rule: ScalingRule, default_owner_id: int) -> PoolKey:
    return PoolKey(rule.owner_id or default_owner_id, rule.model, rule.system_prompt)


def _woken_rules(owner_ids: Sequence[int]) -> dict[int, ScalingRule]:
    """The pool each owner's waiting demand wakes: their enabled rule first by name."""
    rules = ScalingRule.objects.filter(enabled=True, owner_id__in=list(owner_ids)).order_by("name")
    woken: dict[int, ScalingRule] = {}
    for rule in rules:
        woken.setdefault(rule.owner_id, rule)
    return woken


def _waiting(rules: Sequence[ScalingRule], now: datetime) -> dict[int, int]:
    """The demand waiting for each rule's pool, by rule id: an owner's requests that name no
    agent count in the pool of theirs ``_woken_rules`` names, not in each."""
    owners = {rule.owner_id for rule in rules if rule.owner_id is not None}
    counts = demand_waiting(owner_ids=owners, now=now) if owners else {}
    if not counts:
        return {}
    woken = _woken_rules(list(counts))
    return {rule.pk: counts[owner] for owner, rule in woken.items()}


def scaling_evaluate(
    *, rule_ids: Sequence[int] | None = None, now: datetime | None = None, due: bool = True
) -> list[ScalingDecision]:
    """One pass: observe, decide and record for the enabled rules among ``rule_ids`` (all when
    None) that are due (whether due or not, when not ``due``). The queries are the same few
    whatever the number of rules."""
    now = now or timezone.now()
    rules = _claim(rule_ids, now, due=due)
    if not rules:
        return []
    autoscaler_id = _autoscaler_account().pk
    pools = {rule.name: _pool_key(rule, autoscaler_id) for rule in rules}
    readings = pools_observe(pools=pools)
    waiting = _waiting(rules, now)
    for rule in rules:
        readings[rule.name].waiting = waiting.get(rule.pk, 0)
    views = {rule.pk: policy.Rule.of(rule) for rule in rules}
    history = _history(views, now)
    decisions = []
    for rule in rules:
        reading, past, view = readings[rule.name], history.get(rule.pk, []), views[rule.pk]
        observation = policy.Observation(
            now=now,
            agents=reading.agents,
            sessions=reading.sessions,
            error=reading.error,
            waiting=reading.waiting,
        )
        decision = policy.decide(view, observation, past)
        utilization = decision.utilization
        decisions.append(
            ScalingDecision(
                rule=rule,
                created_at=now,
                current_agents=decision.agents,
                desired_agents=decision.target,
                recommended_agents=decision.recommended,
                observed_sessions=decision.sessions,
                utilization=None
                if utilization is None
                else Decimal(str(round(min(utilization, 99_999_999), 4))),
                action=decision.direction.value,
                reason=decision.reason,
                inputs=_inputs(view, reading, now, past, decision),
                metrics_error=reading.error,
            )
        )
    return ScalingDecision.objects.bulk_create(decisions)


def _pool_agents(rule: ScalingRule, owner_id: int) -> QuerySet[Agent]:
    return Agent.objects.filter(
        owner_id=owner_id,
        model=rule.model,
        system_prompt=rule.system_prompt,
        deleted_at__isnull=True,
        status__in=Agent.ACTIVE_STATUSES,
    ).annotate(open_sessions=Count("sessions", filter=Q(sessions__closed_at__isnull=True)))


def scaling_apply(*, decision: ScalingDecision) -> dict[str, Any]:
    """Carry out ``decision`` on its rule's pool, then stop the pool's draining agents that no
    longer hold a session. What was done is added to the decision's inputs and returned."""
    rule = decision.rule
    owner = rule.owner or _autoscaler_account()
    pool = _pool_agents(rule, owner.pk)
    done: dict[str, Any] = {"undrained": 0, "spawned": 0, "draining": 0, "stopped": 0}
    change = decision.desired_agents - decision.current_agents
    if change > 0:
        draining = pool.filter(draining_since__isnull=False).order_by("-open_sessions")
        back = [agent.pk for agent in draining[:change]]
        done["undrained"] = Agent.objects.filter(pk__in=back).update(draining_since=None)
        for _ in range(change - done["undrained"]):
            try:
                agent_spawn(
                    owner=owner,
                    model=rule.model,
                    name=rule.name,
                    system_prompt=rule.system_prompt,
                    max_concurrent_sessions=min(max(rule.target_sessions_per_agent, 100), 10_000),
                )
            except ConsoleError as exc:  # the quota or the hosts are full: grow on a later pass
                done["error"] = f"{exc.code}: {exc}"
                break
            done["spawned"] += 1
    elif change < 0:
        serving = pool.filter(draining_since__isnull=True).order_by("open_sessions", "-created_at")
        retiring = [agent.pk for agent in serving[:-change]]
        done["draining"] = Agent.objects.filter(
            pk__in=retiring, draining_since__isnull=True
        ).update(draining_since=decision.created_at)
    idle = pool.filter(draining_since__isnull=False, open_sessions=0)
    for agent in idle:
        agent_stop(agent=agent)
        done["stopped"] += 1
    if change or done["stopped"]:
        decision.inputs = {**decision.inputs, "applied": done}
        ScalingDecision.objects.filter(pk=decision.pk).update(inputs=decision.inputs)
    return done


def scaling_rule_evaluate(*, rule_id: int, now: datetime | None = None) -> ScalingDecision | None:
    """Evaluate one rule if it is enabled and due, and apply its decision; None otherwise
    (paused, deleted, or evaluated within its interval already)."""
    decisions = scaling_evaluate(rule_ids=[rule_id], now=now)
    if not decisions:
        return None
    scaling_apply(decision=decisions[0])
    return decisions[0]


def scaling_wake(*, owner_id: int, now: datetime | None = None) -> ScalingDecision | None:
    """Answer the owner's waiting demand (``AgentDemand``): evaluate and apply the rule of the
    pool it wakes (``_woken_rules``) at once when that pool has no agent serving, else only when
    due, and mark the demand answered with the pool's name ("" when no rule of theirs wakes
    one, which refuses its callers). The decision, or None when none was taken."""
    now = now or timezone.now()
    rule = _woken_rules([owner_id]).get(owner_id)
    decision = None
    if rule is not None:
        at_zero = not _pool_agents(rule, owner_id).filter(draining_since__isnull=True).exists()
        decisions = scaling_evaluate(rule_ids=[rule.pk], now=now, due=not at_zero)
        if decisions:
            decision = decisions[0]
            scaling_apply(decision=decision)
    AgentDemand.objects.filter(owner_id=owner_id, answered_at__isnull=True).update(
        answered_at=now, pool=rule.name if rule is not None else ""
    )
    return decision
