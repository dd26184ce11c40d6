"""The scaling policy: a pure function from a rule, what was observed and the recent decisions
to the next agent count, with the reason in plain words.

No database, no clock: the time comes in the observation, so the same inputs always give the
same decision, the beat task and the simulator share it, and a recorded decision can be replayed.

How a count is chosen, in order:

1. **Load.** Utilization is open sessions over ``agents * target_sessions_per_agent``. Above the
   scale-up threshold (or when the warm pool is short) the pool is sized to carry the load at its
   target, ``ceil(sessions / target_sessions_per_agent)``, plus ``warm_pool_size`` idle agents;
   below the scale-down threshold it is sized the same way, smaller; between the two it holds
   (the band keeps a pool from chasing every small change). With ``predictive``, the load is the
   larger of the sessions now and a straight-line forecast of the recent observations, one
   scale-up period ahead: a rising trend grows the pool before it is needed; a falling one never
   shrinks it early.
2. **Metrics failed.** The pool keeps its count (``keep``) or goes to ``fallback_agents``
   (``fixed``), as KEDA's fallback does; the other limits below still apply.
3. **Stabilization.** A shrink goes only as low as the highest count recommended within the
   scale-down window, as a HorizontalPodAutoscaler's stabilization window does; a brief dip
   does not give agents away.
4. **Cooldowns.** No move up sooner than ``scale_up_cooldown_seconds`` after the last move,
   none down sooner than ``scale_down_cooldown_seconds``: the count never reverses within a
   cooldown.
5. **Step limits.** Within each period the count moves at most by the step (agents, or percent
   of the count at the period's start; a percent step still allows one agent from zero); with
   several steps, ``select`` takes the one allowing the largest change (``max``) or the
   smallest (``min``), like HPA's ``selectPolicy``.
6. **Bounds.** The result is always within ``[min_agents, max_agents]``; a pool outside them
   (the rule was just changed) goes straight back within. The load's count is clamped to them
   before the other limits, so a hold at the minimum names the minimum, not a cooldown.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "Decision",
    "Direction",
    "Observation",
    "Past",
    "Rule",
    "Step",
    "decide",
    "forecast_sessions",
    "history_span_seconds",
]


class Direction(enum.StrEnum):
    UP = "scale_up"
    DOWN = "scale_down"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Step:
    """At most ``value`` agents (or percent of the count at the period's start) per period."""

    value: int
    unit: Literal["agents", "percent"] = "percent"
    period_seconds: int = 60


@dataclass(frozen=True, slots=True)
class Rule:
    """What the policy reads of a ``ScalingRule``; the defaults are the model's."""

    min_agents: int = 10
    max_agents: int = 1000
    target_sessions_per_agent: int = 100
    scale_up_threshold: float = 0.80
    scale_down_threshold: float = 0.30
    evaluation_interval_seconds: int = 30
    scale_up_cooldown_seconds: int = 120
    scale_down_cooldown_seconds: int = 300
    scale_up_steps: tuple[Step, ...] = (Step(100, "percent", 60),)
    scale_down_steps: tuple[Step, ...] = (Step(10, "percent", 60),)
    scale_up_select: Literal["max", "min"] = "max"
    scale_down_select: Literal["max", "min"] = "max"
    warm_pool_size: int = 0
    on_metrics_failure: Literal["keep", "fixed"] = "keep"
    fallback_agents: int | None = None
    predictive: bool = False
    predictive_window_seconds: int = 1800

    def as_dict(self) -> dict[str, Any]:
        """The rule as JSON-ready values (what a recorded decision keeps)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("scale_up_steps", "scale_down_steps"):
            values[name] = [[s.value, s.unit, s.period_seconds] for s in values[name]]
        return values

    @classmethod
    def of(cls, rule: Any) -> Rule:
        """The policy's view of a ``ScalingRule`` (or anything with its fields)."""
        return cls(
            min_agents=rule.min_agents,
            max_agents=rule.max_agents,
            target_sessions_per_agent=rule.target_sessions_per_agent,
            scale_up_threshold=float(rule.scale_up_threshold),
            scale_down_threshold=float(rule.scale_down_threshold),
            evaluation_interval_seconds=rule.evaluation_interval_seconds,
            scale_up_cooldown_seconds=rule.scale_up_cooldown_seconds,
            scale_down_cooldown_seconds=rule.scale_down_cooldown_seconds,
            scale_up_steps=(
                Step(rule.scale_up_max_step, rule.scale_up_step_unit, rule.scale_up_period_seconds),
            ),
            scale_down_steps=(
                Step(
                    rule.scale_down_max_step,
                    rule.scale_down_step_unit,
                    rule.scale_down_period_seconds,
                ),
            ),
            warm_pool_size=rule.warm_pool_size,
            on_metrics_failure=rule.on_metrics_failure,
            fallback_agents=rule.fallback_agents,
            predictive=rule.predictive,
            predictive_window_seconds=rule.predictive_window_minutes * 60,
        )


@dataclass(frozen=True, slots=True)
class Observation:
    """The pool now: its agents (booting or serving, not draining), open sessions, and the
    requests waiting for one of its agents to run. ``sessions`` is None when the metrics could
    not be read; ``error`` says why."""

    now: datetime
    agents: int
    sessions: int | None
    error: str = ""
    waiting: int = 0

    @property
    def waking(self) -> bool:
        """Whether the pool is at zero with demand waiting: activation, in KEDA's words."""
        return self.agents == 0 and self.waiting > 0

    @property
    def failed(self) -> bool:
        return self.sessions is None or bool(self.error)


@dataclass(frozen=True, slots=True)
class Past:
    """One earlier decision, as the policy needs it: when, what it saw, what the load called
    for (``recommended``) and the count it chose."""

    at: datetime
    agents: int
    target: int
    sessions: int | None = None
    recommended: int | None = None

    @property
    def moved(self) -> bool:
        return self.target != self.agents


@dataclass(frozen=True, slots=True)
class Decision:
    """The count to run, the direction of the move, and why."""

    target: int
    direction: Direction
    reason: str
    agents: int
    sessions: int | None
    utilization: float | None
    recommended: int | None
    forecast: float | None = None
    limits: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "direction": self.direction.value,
            "reason": self.reason,
            "agents": self.agents,
            "sessions": self.sessions,
            "utilization": self.utilization,
            "recommended": self.recommended,
            "forecast": self.forecast,
            "limits": list(self.limits),
        }


def history_span_seconds(rule: Rule) -> int:
    """How far back ``decide`` looks: the history a caller needs to pass."""
    periods = [s.period_seconds for s in (*rule.scale_up_steps, *rule.scale_down_steps)]
    spans = [rule.scale_up_cooldown_seconds, rule.scale_down_cooldown_seconds, *periods]
    if rule.predictive:
        spans.append(rule.predictive_window_seconds)
    return max(spans)


def _ago(now: datetime, then: datetime) -> float:
    return (now - then).total_seconds()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def forecast_sessions(
    *, points: Sequence[tuple[float, int]], at: float, min_points: int = 3
) -> float | None:
    """The least-squares straight line through ``(seconds, sessions)`` points, read at ``at``;
    None with too few points or no spread in time."""
    if len(points) < min_points:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_s = sum(s for _, s in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    slope = sum((t - mean_t) * (s - mean_s) for t, s in points) / spread
    return max(0.0, mean_s + slope * (at - mean_t))


_WAKE = "the pool is at zero with demand waiting: waking it (activation)"


def _needed(sessions: float, per_agent: int) -> int:
    # A float forecast may sit a hair above a whole number of agents' worth.
    return math.ceil(round(sessions / per_agent, 9))


def _recommend(
    rule: Rule, obs: Observation, history: Sequence[Past]
) -> tuple[int, str, float | None]:
    """The count the load alone calls for (before stabilization, cooldowns, steps and bounds),
    why, and the forecast it was sized for, if any."""
    sessions = obs.sessions or 0
    per_agent, agents = rule.target_sessions_per_agent, obs.agents
    capacity = agents * per_agent
    load: float = sessions + obs.waiting
    waiting = f" and {_plural(obs.waiting, 'request')} waiting for an agent" if obs.waiting else ""
    seen = (
        f"{sessions} sessions{waiting} on {_plural(agents, 'agent')} at {per_agent} per agent: "
        + (f"utilization {load / capacity:.2f}" if capacity else "no capacity")
    )
    forecast: float | None = None
    if rule.predictive:
        now = obs.now
        window = [
            (-_ago(now, p.at), p.sessions)
            for p in history
            if p.sessions is not None and 0 < _ago(now, p.at) <= rule.predictive_window_seconds
        ]
        ahead = max(s.period_seconds for s in rule.scale_up_steps)
        predicted = forecast_sessions(points=[*window, (0.0, sessions)], at=float(ahead))
        if predicted is not None and predicted > sessions:
            forecast = predicted
            load = predicted + obs.waiting
            seen += (
                f"; the trend of the last {len(window) + 1} observations forecasts "
                f"{predicted:.0f} sessions in {ahead} s"
                + (f", utilization {load / capacity:.2f}" if capacity else "")
            )
    utilization = load / capacity if capacity else (math.inf if load else 0.0)
    needed = _needed(load, per_agent)
    desired = needed + rule.warm_pool_size
    carry = (
        ("1 agent carries" if needed == 1 else f"{needed} agents carry")
        + " the load"
        + (f", plus {rule.warm_pool_size} warm" if rule.warm_pool_size else "")
    )
    up, down = rule.scale_up_threshold, rule.scale_down_threshold
    if desired > agents and (utilization > up or agents - needed < rule.warm_pool_size):
        if obs.waking:
            why = _WAKE
        elif utilization > up:
            why = f"above the scale-up threshold {up:.2f}"
        else:
            why = f"fewer than {rule.warm_pool_size} warm agents to spare"
        return desired, f"{seen}, {why}; {carry}.", forecast
    if desired < agents and utilization < down:
        return desired, f"{seen}, below the scale-down threshold {down:.2f}; {carry}.", forecast
    if down <= utilization <= up:
        return agents, f"{seen}, within the thresholds {down:.2f}-{up:.2f}.", forecast
    return agents, f"{seen}; {carry}, as many as run.", forecast


def _step_limit(
    steps: tuple[Step, ...],
    select: str,
    *,
    up: bool,
    agents: int,
    now: datetime,
    history: Sequence[Past],
) -> tuple[int, str]:
    """The furthest the count may move this period (HPA's behavior policies): a bound above
    for growth, below for shrinking, and the step that set it."""
    bounds: list[tuple[int, str]] = []
    for step in steps:
        recent = [p for p in history if 0 <= _ago(now, p.at) < step.period_seconds]
        added = sum(max(0, p.target - p.agents) for p in recent)
        removed = sum(max(0, p.agents - p.target) for p in recent)
        start = max(0, agents - added + removed)  # the count when the period began
        if up and step.unit == "agents":
            bound = start + step.value
        elif up:
            bound = max(math.ceil(start * (1 + step.value / 100)), start + 1)
        elif step.unit == "agents":
            bound = max(0, start - step.value)
        else:
            bound = max(0, math.floor(start * (1 - step.value / 100)))
        unit = "%" if step.unit == "percent" else (" agent" if step.value == 1 else " agents")
        bounds.append((bound, f"{step.value}{unit} per {step.period_seconds} s"))
    # "max" allows the largest change: the highest bound up, the lowest down.
    widest = (select == "max") == up
    return max(bounds) if widest else min(bounds)


def decide(rule: Rule, observation: Observation, history: Sequence[Past]) -> Decision:
    """The next agent count for ``rule``'s pool, given what was observed now and the earlier
    decisions (any order; those at or after ``observation.now`` are ignored)."""
    obs, now = observation, observation.now
    past = sorted((p for p in history if p.at < now), key=lambda p: p.at)
    agents = obs.agents
    limits: list[str] = []
    forecast: float | None = None

    if obs.failed:
        error = obs.error or "no value"
        if rule.on_metrics_failure == "fixed" and rule.fallback_agents is not None:
            recommended = rule.fallback_agents
            why = f"The metrics could not be read ({error}); the fallback is {recommended}."
        else:
            recommended = agents
            why = f"The metrics could not be read ({error}); keeping the current count."
        if obs.waking and recommended < 1:
            recommended = 1
            why += f" {_plural(obs.waiting, 'request')} waiting for an agent: {_WAKE}."
        utilization = None
    else:
        recommended, why, forecast = _recommend(rule, obs, past)
        why = why[0].upper() + why[1:]
        capacity = agents * rule.target_sessions_per_agent
        utilization = (obs.sessions or 0) / capacity if capacity else None
    target = recommended

    lowest, highest = rule.min_agents, rule.max_agents
    if not lowest <= agents <= highest:
        target = min(max(target, lowest), highest)
        side = "below the rule's minimum" if agents < lowest else "above the rule's maximum"
        edge = lowest if agents < lowest else highest
        move = "up" if target > agents else "down"
        reason = (
            f"{why} The pool has {_plural(agents, 'agent')}, {side} of {edge}:"
            f" scaling {move} to {target}."
        )
        return _decision(target, reason, obs, utilization, recommended, forecast, limits)

    # The bounds come first: when the load asks for less than the minimum (or more than the
    # maximum), that is what binds, whatever a cooldown or a step would also allow.
    clamped = min(max(target, lowest), highest)
    if clamped != target:
        edge = "maximum" if target > highest else "minimum"
        limits.append(f"the rule's {edge} is {clamped}")
        target = clamped

    if target < agents:
        window = [
            p.recommended
            for p in past
            if p.recommended is not None and _ago(now, p.at) < rule.scale_down_cooldown_seconds
        ]
        if window and max(window) > target:
            stabilized = min(max(window), agents)
            limits.append(
                f"the highest count recommended in the last {rule.scale_down_cooldown_seconds} s"
                f" is {max(window)}, so it shrinks no lower than {stabilized}"
            )
            target = stabilized

    if target != agents:
        up = target > agents
        cooldown = rule.scale_up_cooldown_seconds if up else rule.scale_down_cooldown_seconds
        last_move = next((p for p in reversed(past) if p.moved), None)
        # A wake's callers wait only their boot time, shorter than the cooldown of the move to
        # zero; a move up within the cooldown is a wake (or growth) already on its way.
        woke_after_shrink = obs.waking and (
            last_move is None or last_move.target < last_move.agents
        )
        if not woke_after_shrink and last_move is not None and _ago(now, last_move.at) < cooldown:
            limits.append(
                f"the last move ({last_move.agents} to {last_move.target}) was "
                f"{_ago(now, last_move.at):.0f} s ago, within the {cooldown} s "
                f"scale-{'up' if up else 'down'} cooldown"
            )
            target = agents

    if target != agents:
        up = target > agents
        steps = rule.scale_up_steps if up else rule.scale_down_steps
        select = rule.scale_up_select if up else rule.scale_down_select
        bound, step = _step_limit(steps, select, up=up, agents=agents, now=now, history=past)
        # Moves earlier in the period may have used up the step, never reversed it.
        bound = max(bound, agents) if up else min(bound, agents)
        if (up and target > bound) or (not up and target < bound):
            limits.append(f"the step limit ({step}) allows {bound}")
            target = bound

    if target > agents:
        verdict = f"Scaling up from {agents} to {target}."
    elif target < agents:
        verdict = f"Scaling down from {agents} to {target}."
    else:
        verdict = f"Holding at {agents}."
    limited = f" Limited: {'; '.join(limits)}." if limits else ""
    return _decision(
        target, f"{why}{limited} {verdict}", obs, utilization, recommended, forecast, limits
    )


def _decision(
    target: int,
    reason: str,
    obs: Observation,
    utilization: float | None,
    recommended: int,
    forecast: float | None,
    limits: list[str],
) -> Decision:
    if target > obs.agents:
        direction = Direction.UP
    elif target < obs.agents:
        direction = Direction.DOWN
    else:
        direction = Direction.HOLD
    return Decision(
        target=target,
        direction=direction,
        reason=reason,
        agents=obs.agents,
        sessions=obs.sessions,
        utilization=None if utilization is None or not math.isfinite(utilization) else utilization,
        recommended=recommended,
        forecast=forecast,
        limits=tuple(limits),
    )
