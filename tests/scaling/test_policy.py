"""The scaling policy, a pure function: each behaviour on its own, the Hypercore example, and
properties that hold for any rule and load (bounds, no reversal within a cooldown, step limits,
a steady load settles)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.policy import (
    Decision,
    Direction,
    Observation,
    Past,
    Rule,
    Step,
    decide,
    forecast_sessions,
    history_span_seconds,
)

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def observe(agents: int, sessions: int | None, *, t: float = 0, error: str = "") -> Observation:
    return Observation(now=at(t), agents=agents, sessions=sessions, error=error)


def past(t: float, agents: int, target: int, sessions: int | None = None, recommended=None):
    return Past(at=at(t), agents=agents, target=target, sessions=sessions, recommended=recommended)


# Limits out of the way, to look at one behaviour at a time.
FREE = Rule(
    min_agents=0,
    scale_up_cooldown_seconds=0,
    scale_down_cooldown_seconds=0,
    scale_up_steps=(Step(10_000, "agents"),),
    scale_down_steps=(Step(10_000, "agents"),),
)


# --- The load -------------------------------------------------------------------------------------


def test_the_hypercore_example_scales_7500_sessions_on_50_agents_to_75():
    decision = decide(Rule(), observe(50, 7500), [])

    assert decision.target == 75
    assert decision.direction is Direction.UP
    assert decision.utilization == 1.5
    assert "7500 sessions on 50 agents" in decision.reason
    assert "utilization 1.50" in decision.reason
    assert "above the scale-up threshold 0.80" in decision.reason
    assert "Scaling up from 50 to 75" in decision.reason


def test_a_load_within_the_thresholds_holds():
    decision = decide(FREE, observe(50, 2500), [])

    assert (decision.target, decision.direction) == (50, Direction.HOLD)
    assert "within the thresholds 0.30-0.80" in decision.reason
    assert "Holding at 50" in decision.reason


def test_below_the_scale_down_threshold_the_pool_shrinks_to_carry_the_load():
    decision = decide(FREE, observe(50, 1000), [])  # utilization 0.20

    assert (decision.target, decision.direction) == (10, Direction.DOWN)
    assert "below the scale-down threshold 0.30" in decision.reason
    assert "10 agents carry the load" in decision.reason


def test_a_partly_used_agent_counts_as_a_whole_one():
    assert decide(FREE, observe(1, 101), []).target == 2


def test_a_pool_scales_to_zero_with_no_sessions_and_back_from_zero():
    assert decide(FREE, observe(3, 0), []).target == 0
    woken = decide(FREE, observe(0, 1), [])
    assert (woken.target, woken.direction) == (1, Direction.UP)
    assert "no capacity" in woken.reason
    assert woken.utilization is None
    assert decide(FREE, observe(0, 0), []).direction is Direction.HOLD


def waiting(agents: int, sessions: int | None, waiting: int, **kw) -> Observation:
    return replace(observe(agents, sessions, **kw), waiting=waiting)


def test_a_pool_at_zero_with_demand_waiting_wakes_to_one_agent_and_says_why():
    rule = replace(Rule(), min_agents=0)
    woken = decide(rule, waiting(0, 0, 2), [])

    assert (woken.target, woken.direction) == (1, Direction.UP)
    assert woken.reason == (
        "0 sessions and 2 requests waiting for an agent on 0 agents at 100 per agent: no capacity,"
        " the pool is at zero with demand waiting: waking it (activation); 1 agent carries the"
        " load. Scaling up from 0 to 1."
    )


def test_a_pool_at_zero_without_demand_stays_at_zero():
    rule = replace(Rule(), min_agents=0)
    decision = decide(rule, waiting(0, 0, 0), [])

    assert (decision.target, decision.direction) == (0, Direction.HOLD)
    assert "waking" not in decision.reason and "waiting" not in decision.reason


def test_a_wake_is_not_held_back_by_the_cooldown_of_the_move_to_zero():
    rule = replace(Rule(), min_agents=0, scale_up_cooldown_seconds=600)
    history = [past(-10, 1, 0, sessions=0, recommended=0)]

    assert decide(rule, waiting(0, 0, 1), history).target == 1
    assert decide(rule, observe(0, 1), history).target == 0  # sessions alone: the cooldown holds


def test_a_second_wake_within_the_cooldown_of_the_first_holds_while_its_agent_comes():
    rule = replace(Rule(), min_agents=0, scale_up_cooldown_seconds=600)
    history = [past(-1, 0, 1, sessions=0, recommended=1)]

    decision = decide(rule, waiting(0, 0, 3), history)

    assert (decision.target, decision.direction) == (0, Direction.HOLD)
    assert "within the 600 s scale-up cooldown" in decision.reason


def test_a_wake_happens_even_when_the_sessions_cannot_be_read():
    rule = replace(Rule(), min_agents=0)
    decision = decide(rule, waiting(0, None, 1, error="Prometheus answered 503"), [])

    assert (decision.target, decision.direction) == (1, Direction.UP)
    assert "could not be read" in decision.reason
    assert "1 request waiting for an agent: the pool is at zero" in decision.reason


def test_waiting_demand_keeps_a_woken_pool_from_shrinking_back_to_zero():
    decision = decide(FREE, waiting(1, 0, 3), [])

    assert (decision.target, decision.direction) == (1, Direction.HOLD)
    assert "3 requests waiting for an agent" in decision.reason


def test_waiting_demand_counts_as_load_beyond_zero():
    rule = replace(FREE, target_sessions_per_agent=10)

    assert decide(rule, waiting(2, 18, 7), []).target == 3


def test_a_pool_with_sessions_never_scales_to_zero():
    assert decide(FREE, observe(1, 5), []).target == 1


def test_the_warm_pool_is_kept_beyond_the_load():
    rule = replace(FREE, warm_pool_size=5)

    grown = decide(rule, observe(50, 7500), [])
    assert grown.target == 80
    assert "plus 5 warm" in grown.reason
    # Within the thresholds, a short warm pool is still refilled.
    refilled = decide(rule, observe(10, 700), [])
    assert refilled.target == 12
    assert "fewer than 5 warm agents to spare" in refilled.reason
    # And the grown pool is steady.
    assert decide(rule, observe(80, 7500), []).direction is Direction.HOLD


# --- Bounds ---------------------------------------------------------------------------------------


def test_the_count_is_clamped_to_the_rules_bounds():
    rule = replace(FREE, min_agents=5, max_agents=60)

    high = decide(rule, observe(50, 7500), [])
    assert high.target == 60
    assert "the rule's maximum is 60" in high.reason
    low = decide(rule, observe(10, 0), [])
    assert low.target == 5
    assert "the rule's minimum is 5" in low.reason


def test_a_pool_outside_its_bounds_goes_straight_back_within():
    rule = Rule(min_agents=10, max_agents=20)
    recent_move = [past(-10, 5, 6)]  # a cooldown and a step limit would otherwise hold it

    assert decide(rule, observe(2, 0), recent_move).target == 10
    shrunk = decide(rule, observe(40, 4000), recent_move)
    assert shrunk.target == 20
    assert shrunk.reason.endswith(
        "The pool has 40 agents, above the rule's maximum of 20: scaling down to 20."
    )
    grown = decide(Rule(min_agents=1, max_agents=20), observe(0, 0), [])
    assert grown.reason.endswith(
        "The pool has 0 agents, below the rule's minimum of 1: scaling up to 1."
    )


def test_a_hold_at_the_minimum_names_the_minimum_not_the_cooldown():
    rule = replace(FREE, min_agents=1, scale_down_cooldown_seconds=300)
    # The last move was a minute ago, within the cooldown; but the minimum is what binds.
    held = decide(rule, observe(1, 0), [past(-60, 2, 1)])

    assert held.direction is Direction.HOLD and held.target == 1
    assert "the rule's minimum is 1" in held.reason
    assert "cooldown" not in held.reason
    assert held.reason.endswith("Holding at 1.")


# --- Cooldowns and stabilization ------------------------------------------------------------------


def test_no_growth_within_the_scale_up_cooldown_of_the_last_move():
    rule = replace(FREE, scale_up_cooldown_seconds=120)

    held = decide(rule, observe(50, 7500), [past(-60, 40, 50)])
    assert held.target == 50
    assert "60 s ago, within the 120 s scale-up cooldown" in held.reason
    assert decide(rule, observe(50, 7500), [past(-120, 40, 50)]).target == 75


def test_no_shrinking_within_the_scale_down_cooldown_of_the_last_move():
    rule = replace(FREE, scale_down_cooldown_seconds=300)

    held = decide(rule, observe(75, 1000), [past(-200, 50, 75)])
    assert held.target == 75
    assert "within the 300 s scale-down cooldown" in held.reason
    assert decide(rule, observe(75, 1000), [past(-300, 50, 75)]).target == 10


def test_a_hold_is_not_a_move_and_starts_no_cooldown():
    rule = replace(FREE, scale_up_cooldown_seconds=120)
    holds = [past(-t, 50, 50) for t in (30, 60, 90)]

    assert decide(rule, observe(50, 7500), holds).target == 75


def test_shrinking_goes_no_lower_than_the_highest_recent_recommendation():
    rule = replace(FREE, scale_down_cooldown_seconds=300)
    history = [
        past(-400, 100, 100, recommended=100),  # before the window
        past(-250, 100, 100, recommended=80),
        past(-100, 100, 100, recommended=60),
    ]

    decision = decide(rule, observe(100, 1000), history)
    assert decision.target == 80
    assert decision.recommended == 10
    assert "the highest count recommended in the last 300 s is 80" in decision.reason


def test_decisions_at_or_after_now_are_ignored():
    rule = replace(FREE, scale_up_cooldown_seconds=120)

    assert decide(rule, observe(50, 7500), [past(0, 40, 50), past(30, 40, 50)]).target == 75


# --- Step limits ----------------------------------------------------------------------------------


def test_a_percent_step_limits_growth_per_period():
    rule = replace(FREE, scale_up_steps=(Step(50, "percent", 60),))

    first = decide(rule, observe(20, 7500), [])
    assert first.target == 30
    assert "the step limit (50% per 60 s) allows 30" in first.reason
    # Growth earlier in the period counts against it: the period started at 20.
    assert decide(rule, observe(30, 7500, t=30), [past(0, 20, 30)]).target == 30
    assert decide(rule, observe(30, 7500, t=60), [past(0, 20, 30)]).target == 45


def test_a_percent_step_still_grows_a_pool_from_zero():
    rule = replace(FREE, scale_up_steps=(Step(100, "percent", 60),))

    assert decide(rule, observe(0, 5000), []).target == 1


def test_an_agent_step_limits_shrinking_per_period():
    rule = replace(FREE, scale_down_steps=(Step(4, "agents", 60),))

    assert decide(rule, observe(50, 100), []).target == 46
    assert decide(rule, observe(48, 100, t=10), [past(0, 50, 48)]).target == 46


def test_select_max_takes_the_step_allowing_the_largest_change_and_min_the_smallest():
    steps = (Step(4, "agents", 60), Step(50, "percent", 60))
    widest = replace(FREE, scale_up_steps=steps, scale_down_steps=steps)
    narrowest = replace(widest, scale_up_select="min", scale_down_select="min")

    assert decide(widest, observe(20, 7500), []).target == 30
    assert decide(narrowest, observe(20, 7500), []).target == 24
    assert decide(widest, observe(20, 0), []).target == 10
    assert decide(narrowest, observe(20, 0), []).target == 16


# --- When the metrics fail ------------------------------------------------------------------------


def test_failed_metrics_keep_the_current_count():
    decision = decide(Rule(), observe(30, None, error="Prometheus answered 503"), [])

    assert (decision.target, decision.direction) == (30, Direction.HOLD)
    assert decision.utilization is None
    assert "could not be read (Prometheus answered 503)" in decision.reason
    assert "keeping the current count" in decision.reason


def test_failed_metrics_with_a_fixed_fallback_go_to_it_within_the_limits():
    rule = replace(FREE, on_metrics_failure="fixed", fallback_agents=25)

    assert decide(rule, observe(30, None, error="timeout"), []).target == 25
    assert decide(rule, observe(10, None, error="timeout"), []).target == 25
    stepped = replace(rule, scale_up_steps=(Step(5, "agents", 60),))
    limited = decide(stepped, observe(10, None, error="timeout"), [])
    assert limited.target == 15
    assert "the fallback is 25" in limited.reason


def test_an_error_marks_an_observation_failed_even_with_a_value():
    assert decide(Rule(), observe(30, 9000, error="partial answer"), []).target == 30


# --- Predictive -----------------------------------------------------------------------------------


def test_the_forecast_is_a_least_squares_line():
    assert forecast_sessions(points=[(-60, 100), (-30, 200), (0, 300)], at=60) == 500
    assert forecast_sessions(points=[(-60, 100), (0, 300)], at=60) is None  # too few
    assert forecast_sessions(points=[(0, 1), (0, 2), (0, 3)], at=60) is None
    assert forecast_sessions(points=[(-60, 300), (-30, 200), (0, 100)], at=600) == 0


def test_a_rising_trend_grows_the_pool_ahead_of_the_load():
    rule = replace(FREE, predictive=True, predictive_window_seconds=600)
    rising = [past(-90, 10, 10, sessions=500), past(-60, 10, 10, sessions=600)]
    rising.append(past(-30, 10, 10, sessions=700))

    ahead = decide(rule, observe(10, 800), rising)
    assert ahead.target == 10  # 1000 forecast at 60 s: 10 agents carry it at 100 each
    steeper = [past(-t, 10, 10, sessions=800 - 4 * t) for t in (90, 60, 30)]
    grown = decide(rule, observe(10, 800), steeper)
    assert grown.forecast == 1040
    assert grown.target == 11
    assert "forecasts 1040 sessions in 60 s" in grown.reason
    assert decide(replace(rule, predictive=False), observe(10, 800), steeper).target == 10


def test_a_falling_trend_never_shrinks_the_pool_early():
    rule = replace(FREE, predictive=True)
    falling = [past(-t, 10, 10, sessions=200 + 10 * t) for t in (90, 60, 30)]

    decision = decide(rule, observe(10, 500), falling)
    assert decision.target == 10
    assert decision.forecast is None


def test_history_span_covers_every_window_the_policy_reads():
    assert history_span_seconds(Rule()) == 300
    assert history_span_seconds(replace(Rule(), predictive=True)) == 1800


# --- Properties -----------------------------------------------------------------------------------


@st.composite
def rules(draw) -> Rule:
    low = draw(st.integers(0, 50))
    high = draw(st.integers(max(low, 1), 300))
    down = draw(st.integers(5, 90))
    up = draw(st.integers(down + 1, 100))
    fixed = draw(st.booleans())

    def steps():
        return st.lists(
            st.builds(
                Step,
                value=st.integers(1, 200),
                unit=st.sampled_from(["agents", "percent"]),
                period_seconds=st.sampled_from([30, 60, 120, 300]),
            ),
            min_size=1,
            max_size=2,
        ).map(tuple)

    return Rule(
        min_agents=low,
        max_agents=high,
        target_sessions_per_agent=draw(st.integers(1, 200)),
        scale_up_threshold=up / 100,
        scale_down_threshold=down / 100,
        evaluation_interval_seconds=30,
        scale_up_cooldown_seconds=draw(st.sampled_from([0, 30, 60, 120, 300])),
        scale_down_cooldown_seconds=draw(st.sampled_from([0, 30, 60, 300, 600])),
        scale_up_steps=draw(steps()),
        scale_down_steps=draw(steps()),
        scale_up_select=draw(st.sampled_from(["max", "min"])),
        scale_down_select=draw(st.sampled_from(["max", "min"])),
        warm_pool_size=draw(st.integers(0, 5)),
        on_metrics_failure="fixed" if fixed else "keep",
        fallback_agents=draw(st.integers(low, high)) if fixed else None,
        predictive=draw(st.booleans()),
        predictive_window_seconds=600,
    )


loads = st.lists(
    st.one_of(st.none(), st.integers(0, 40_000)), min_size=1, max_size=40
)  # None: the metrics failed that time


def run(rule: Rule, start: int, trace: list[int | None]) -> list[tuple[float, Decision]]:
    """Evaluate every 30 s over ``trace``, the pool reaching each target before the next, with
    the history the policy reads (as the beat task passes it)."""
    agents, history, out = start, [], []
    span = history_span_seconds(rule)
    for i, sessions in enumerate(trace):
        t = 30.0 * i
        obs = observe(agents, sessions, t=t, error="" if sessions is not None else "down")
        recent = [p for p in history if (obs.now - p.at).total_seconds() <= span]
        decision = decide(rule, obs, recent)
        out.append((t, decision))
        history.append(past(t, agents, decision.target, sessions, decision.recommended))
        agents = decision.target
    return out


def within(rule: Rule, start: int) -> int:
    return min(max(start, rule.min_agents), rule.max_agents)


@settings(max_examples=300, deadline=None)
@given(rule=rules(), trace=loads, start=st.integers(0, 400))
def test_the_count_is_never_outside_the_bounds(rule, trace, start):
    for _, decision in run(rule, start, trace):
        assert rule.min_agents <= decision.target <= rule.max_agents


@settings(max_examples=300, deadline=None)
@given(rule=rules(), trace=loads, start=st.integers(0, 400))
def test_no_move_within_a_cooldown_of_the_last(rule, trace, start):
    decisions = run(rule, within(rule, start), trace)
    moves = [(t, d.direction) for t, d in decisions if d.direction != Direction.HOLD]
    for (t1, _), (t2, second) in itertools.pairwise(moves):
        cooldown = (
            rule.scale_up_cooldown_seconds
            if second is Direction.UP
            else rule.scale_down_cooldown_seconds
        )
        assert t2 - t1 >= cooldown


@settings(max_examples=300, deadline=None)
@given(rule=rules(), trace=loads, start=st.integers(0, 400))
def test_each_period_moves_no_further_than_its_step_allows(rule, trace, start):
    rule = replace(
        rule, scale_up_steps=rule.scale_up_steps[:1], scale_down_steps=rule.scale_down_steps[:1]
    )
    moves = [(t, d.agents, d.target) for t, d in run(rule, within(rule, start), trace)]
    for i, (t, agents, target) in enumerate(moves):
        if target == agents:
            continue
        up = target > agents
        step = (rule.scale_up_steps if up else rule.scale_down_steps)[0]
        # The count when the period began: the first evaluation within it saw it.
        base = next(a for s, a, _ in moves[: i + 1] if t - s < step.period_seconds)
        if up and step.unit == "agents":
            assert target - base <= step.value
        elif up:
            assert target <= max(math.ceil(base * (1 + step.value / 100)), base + 1)
        elif step.unit == "agents":
            assert base - target <= step.value
        else:
            assert target >= math.floor(base * (1 - step.value / 100))


@settings(max_examples=200, deadline=None)
@given(rule=rules(), sessions=st.integers(0, 40_000), start=st.integers(0, 400))
def test_a_steady_load_moves_one_way_only(rule, sessions, start):
    directions = {d.direction for _, d in run(rule, within(rule, start), [sessions] * 60)}
    assert not {Direction.UP, Direction.DOWN} <= directions


@settings(max_examples=200, deadline=None)
@given(rule=rules(), sessions=st.integers(0, 40_000), start=st.integers(0, 400))
def test_a_steady_load_settles_and_then_holds(rule, sessions, start):
    fast = replace(
        rule, scale_up_steps=(Step(10_000, "agents"),), scale_down_steps=(Step(10_000, "agents"),)
    )
    decisions = [d for _, d in run(fast, within(rule, start), [sessions] * 100)]
    assert all(d.direction is Direction.HOLD for d in decisions[-20:])
    settled = observe(decisions[-1].target, sessions, t=3000)
    assert decide(fast, settled, []) == decide(fast, settled, [])
    assert decide(fast, settled, []).direction is Direction.HOLD
