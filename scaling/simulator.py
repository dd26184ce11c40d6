"""Replay a load trace through a rule before it is saved: what the pool would have run, how
loaded it would have been, and every move with its reason.

A trace is the open sessions over time: a built-in shape (``ramp``, ``spike``, ``daily``) or a
CSV of ``seconds,sessions`` rows. ``simulate`` evaluates the policy every evaluation interval
on simulated time, the pool reaching each decided count before the next evaluation, and returns
the series; ``simulation_svg`` draws them (sessions, agents, utilization) as a self-contained
SVG, with no script.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from scaling import policy

__all__ = [
    "MAX_EVALUATIONS",
    "MAX_TRACE_POINTS",
    "SHAPES",
    "SimulationResult",
    "TraceError",
    "TracePoint",
    "simulate",
    "simulation_svg",
    "trace_from_csv",
    "trace_shape",
]

MAX_TRACE_POINTS = 10_000
MAX_EVALUATIONS = 20_000
SHAPES = ("ramp", "spike", "daily")
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # simulated time starts here


class TraceError(ValueError):
    """A trace that cannot be replayed, with what is wrong in plain words."""


@dataclass(frozen=True, slots=True)
class TracePoint:
    seconds: float
    sessions: int


@dataclass(frozen=True, slots=True)
class SimPoint:
    """One evaluation: the load, the agents running after the decision, their utilization."""

    seconds: float
    sessions: int
    agents: int
    utilization: float | None


@dataclass(frozen=True, slots=True)
class SimMove:
    seconds: float
    direction: str
    from_agents: int
    to_agents: int
    reason: str


@dataclass(frozen=True, slots=True)
class SimulationResult:
    points: tuple[SimPoint, ...]
    moves: tuple[SimMove, ...]
    target_sessions_per_agent: int

    @property
    def summary(self) -> dict[str, Any]:
        agents = [p.agents for p in self.points]
        used = [p.utilization for p in self.points if p.utilization is not None]
        step = _interval(self.points)
        return {
            "evaluations": len(self.points),
            "moves": len(self.moves),
            "peak_agents": max(agents, default=0),
            "peak_sessions": max((p.sessions for p in self.points), default=0),
            "peak_utilization": round(max(used, default=0.0), 4),
            "mean_utilization": round(sum(used) / len(used), 4) if used else None,
            "overloaded_evaluations": sum(1 for u in used if u > 1),
            "agent_hours": round(sum(agents) * step / 3600, 2),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "points": [
                {
                    "seconds": p.seconds,
                    "sessions": p.sessions,
                    "agents": p.agents,
                    "utilization": None if p.utilization is None else round(p.utilization, 4),
                }
                for p in self.points
            ],
            "decisions": [
                {
                    "seconds": m.seconds,
                    "direction": m.direction,
                    "from_agents": m.from_agents,
                    "to_agents": m.to_agents,
                    "reason": m.reason,
                }
                for m in self.moves
            ],
            "summary": self.summary,
        }


def _interval(points: Sequence[SimPoint]) -> float:
    return points[1].seconds - points[0].seconds if len(points) > 1 else 0.0


# --- Traces --------------------------------------------------------------------------------------


def _points(duration: float, step: float) -> list[float]:
    if duration <= 0 or step <= 0:
        raise TraceError("duration_seconds and step_seconds must be positive")
    count = int(duration // step) + 1
    if count > MAX_TRACE_POINTS:
        raise TraceError(
            f"{count} points ({duration:.0f} s every {step:.0f} s) is more than "
            f"{MAX_TRACE_POINTS}; use a longer step"
        )
    return [i * step for i in range(count)]


def trace_shape(
    name: str,
    *,
    low: int = 100,
    high: int = 5000,
    duration_seconds: float | None = None,
    step_seconds: float = 30,
    spike_at_seconds: float | None = None,
    spike_seconds: float = 300,
    peak_hour: float = 14,
) -> tuple[TracePoint, ...]:
    """A built-in load shape from ``low`` to ``high`` sessions over ``duration_seconds``:

    - ``ramp``: a straight climb from ``low`` to ``high``;
    - ``spike``: ``low``, jumping to ``high`` at ``spike_at_seconds`` (default: a third of the
      way) for ``spike_seconds``;
    - ``daily``: a day's cycle, ``low`` at night and ``high`` at ``peak_hour``.

    The duration defaults to an hour, a day for ``daily``.
    """
    if name not in SHAPES:
        raise TraceError(f"unknown shape {name!r}; the shapes are {', '.join(SHAPES)}")
    if low < 0 or high < 0:
        raise TraceError("low and high are session counts, never negative")
    if duration_seconds is None:
        duration_seconds = 86_400 if name == "daily" else 3600
    times = _points(duration_seconds, step_seconds)
    if name == "ramp":
        span = times[-1] or 1

        def at(t: float) -> float:
            return low + (high - low) * t / span

    elif name == "spike":
        start = duration_seconds / 3 if spike_at_seconds is None else spike_at_seconds

        def at(t: float) -> float:
            return high if start <= t < start + spike_seconds else low

    else:

        def at(t: float) -> float:
            hours = (t / 3600) % 24
            return low + (high - low) * (1 + math.cos(2 * math.pi * (hours - peak_hour) / 24)) / 2

    return tuple(TracePoint(t, round(at(t))) for t in times)


def trace_from_csv(text: str) -> tuple[TracePoint, ...]:
    """A trace from CSV rows of ``seconds,sessions`` (a header row is allowed); the times
    start anywhere and must increase."""
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if rows and not _is_number(rows[0][0]):
        rows = rows[1:]  # a header
    if not rows:
        raise TraceError("the CSV has no rows; each row is seconds,sessions")
    if len(rows) > MAX_TRACE_POINTS:
        raise TraceError(f"the CSV has {len(rows)} rows; at most {MAX_TRACE_POINTS}")
    trace: list[TracePoint] = []
    for number, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise TraceError(f"row {number}: expected 2 columns (seconds,sessions), got {len(row)}")
        seconds_text, sessions_text = (cell.strip() for cell in row)
        if not _is_number(seconds_text):
            raise TraceError(f"row {number}: seconds {seconds_text!r} is not a number")
        if not sessions_text.isdigit():
            raise TraceError(
                f"row {number}: sessions {sessions_text!r} is not a whole number of sessions"
            )
        seconds = float(seconds_text)
        if trace and seconds <= trace[-1].seconds:
            raise TraceError(
                f"row {number}: the time {seconds_text} does not come after the previous row's"
            )
        trace.append(TracePoint(seconds, int(sessions_text)))
    first = trace[0].seconds
    return tuple(TracePoint(p.seconds - first, p.sessions) for p in trace)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# --- Replay --------------------------------------------------------------------------------------


def simulate(
    *, rule: Any, trace: Sequence[TracePoint], start_agents: int | None = None
) -> SimulationResult:
    """Replay ``trace`` through ``rule`` (a ``policy.Rule``, or a ``ScalingRule`` even unsaved),
    evaluating every evaluation interval; the pool starts at ``start_agents`` (default: the
    rule's minimum) and reaches each decided count before the next evaluation. The load
    between two trace points is the earlier one's."""
    view = rule if isinstance(rule, policy.Rule) else policy.Rule.of(rule)
    if not trace:
        raise TraceError("the trace is empty")
    interval = view.evaluation_interval_seconds
    end = trace[-1].seconds
    count = int(end // interval) + 1
    if count > MAX_EVALUATIONS:
        raise TraceError(
            f"{count} evaluations ({end:.0f} s every {interval} s) is more than "
            f"{MAX_EVALUATIONS}; shorten the trace or lengthen the interval"
        )
    span = policy.history_span_seconds(view)
    agents = view.min_agents if start_agents is None else start_agents
    history: list[policy.Past] = []
    points: list[SimPoint] = []
    moves: list[SimMove] = []
    index = 0
    for i in range(count):
        seconds = float(i * interval)
        while index + 1 < len(trace) and trace[index + 1].seconds <= seconds:
            index += 1
        sessions = trace[index].sessions
        now = _EPOCH + timedelta(seconds=seconds)
        while history and (now - history[0].at).total_seconds() > span:
            history.pop(0)
        observation = policy.Observation(now=now, agents=agents, sessions=sessions)
        decision = policy.decide(view, observation, history)
        history.append(policy.Past(now, agents, decision.target, sessions, decision.recommended))
        if decision.direction is not policy.Direction.HOLD:
            moves.append(
                SimMove(seconds, decision.direction.value, agents, decision.target, decision.reason)
            )
        agents = decision.target
        capacity = agents * view.target_sessions_per_agent
        points.append(
            SimPoint(seconds, sessions, agents, sessions / capacity if capacity else None)
        )
    return SimulationResult(tuple(points), tuple(moves), view.target_sessions_per_agent)


# --- Drawing -------------------------------------------------------------------------------------

# Type at 13 units in a 720-wide drawing stays about 10 px tall when a phone shows the chart
# 560 px wide (the page lets it scroll sideways below that).
_WIDTH, _PANEL, _GAP, _LEFT, _RIGHT, _TOP, _FONT = 720, 110, 44, 56, 20, 22, 13
_SERIES = (
    ("sessions", "Sessions", "#2563eb"),
    ("agents", "Agents", "#16a34a"),
    ("utilization", "Utilization", "#d97706"),
)
# Round spacings for the time axis, in seconds: the first that gives at most _MAX_TICKS marks.
_TICK_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400)
_MAX_TICKS = 8


def _number(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2f}"


def _clock(seconds: float, *, hours: bool = False) -> str:
    """``1:30`` for a time past the hour (or with ``hours``), ``20 min`` before it."""
    whole, rest = divmod(int(seconds), 3600)
    return f"{whole}:{rest // 60:02d}" if whole or hours else f"{rest // 60} min"


def _time_ticks(end: float) -> list[float]:
    """Round moments from 0 to ``end`` for the time axis: every 10 min, every 4 h..."""
    if end <= 0:
        return [0.0]
    step = next((s for s in _TICK_STEPS if end / s <= _MAX_TICKS), _TICK_STEPS[-1])
    return [float(t) for t in range(0, int(end) + 1, step)]


def simulation_svg(result: SimulationResult, *, title: str = "Simulated autoscaling") -> str:
    """Sessions, agents and utilization over time, one panel each, as an SVG document (every
    text escaped; no script, no external reference). The title is the drawing's accessible
    name; the page around it shows it as a heading."""
    points = result.points
    height = _TOP + len(_SERIES) * (_PANEL + _GAP) - _GAP + 24
    plot_width = _WIDTH - _LEFT - _RIGHT
    end = points[-1].seconds if points else 0.0
    ticks = _time_ticks(end)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" '
        f'width="{_WIDTH}" height="{height}" role="img" aria-label="{escape(title)}" '
        f'font-family="sans-serif" font-size="{_FONT}" fill="#4b5563">',
        f"<title>{escape(title)}</title>",
    ]
    for row, (key, label, colour) in enumerate(_SERIES):
        top = _TOP + row * (_PANEL + _GAP)
        values = [getattr(p, key) for p in points]
        known = [v for v in values if v is not None]
        ceiling = max(known, default=0) or 1
        if key == "utilization":
            ceiling = max(ceiling, 1.0)
        for tick in ticks:
            x = _LEFT + (tick / end * plot_width if end else 0)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + _PANEL}" stroke="#eef0f3"/>'
            )
        parts.append(
            f'<rect x="{_LEFT}" y="{top}" width="{plot_width}" height="{_PANEL}" '
            'fill="none" stroke="#d1d5db"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 6}" y="{top + 10}" text-anchor="end">{_number(ceiling)}</text>'
        )
        parts.append(f'<text x="{_LEFT - 6}" y="{top + _PANEL}" text-anchor="end">0</text>')
        parts.append(
            f'<text x="{_LEFT + 4}" y="{top - 6}" fill="{colour}" font-weight="bold">'
            f"{escape(label)}</text>"
        )
        if key == "utilization":
            y = top + _PANEL - _PANEL / ceiling
            parts.append(
                f'<line x1="{_LEFT}" x2="{_LEFT + plot_width}" y1="{y:.1f}" y2="{y:.1f}" '
                'stroke="#9ca3af" stroke-dasharray="4 3"/>'
            )
        segment: list[str] = []
        segments: list[list[str]] = []
        for point, value in zip(points, values, strict=True):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            x = _LEFT + (point.seconds / end * plot_width if end else 0)
            y = top + _PANEL - value / ceiling * _PANEL
            segment.append(f"{x:.1f},{y:.1f}")
        if segment:
            segments.append(segment)
        for line in segments:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                f'points="{" ".join(line)}"/>'
            )
    # One time axis, under the last panel.
    bottom = _TOP + len(_SERIES) * (_PANEL + _GAP) - _GAP + 16
    for n, tick in enumerate(ticks):
        x = _LEFT + (tick / end * plot_width if end else 0)
        anchor = "start" if n == 0 else "end" if tick == end and n else "middle"
        when = _clock(tick, hours=end >= 3600)
        parts.append(f'<text x="{x:.1f}" y="{bottom}" text-anchor="{anchor}">{when}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
