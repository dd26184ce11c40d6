"""The geometry of the usage charts, drawn as SVG by the templates (no script): cost over time
stacked by model, and horizontal bars for the top users and agents.

Every number here is a coordinate or a label; the templates escape the labels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from usage.selectors import Bucket, Ranked

__all__ = ["Bars", "Stacked", "bars", "money", "stacked"]

SERIES = 8  # colour classes usage-s0 … usage-s7; more models reuse them in turn


def _n(value: float) -> str:
    """A coordinate, as the SVG gets it: a string, so that templates do not localize it."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class Segment:
    x: str
    y: str
    width: str
    height: str
    series: int
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    at: str
    label: str


@dataclass(frozen=True, slots=True)
class Stacked:
    """A stacked bar chart: its view box, plot area, segments, y grid lines and x labels."""

    width: int
    height: int
    left: int
    top: int
    plot_width: float
    plot_height: float
    segments: list[Segment]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    legend: list[tuple[int, str]]
    empty: bool

    @property
    def y_label_x(self) -> str:
        return str(self.left - 6)

    @property
    def x_label_y(self) -> str:
        return str(self.height - 8)


def money(value: Decimal) -> str:
    """A dollar amount for people: cents, or four places under a dollar, and k/M for big."""
    if value >= 1_000_000:
        return f"${value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"${value / 1000:.1f}k"
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.4f}"


def _small_tick(value: Decimal) -> str:
    """A grid line's amount under a dollar, with the places it needs: $0.125, $0.25, $0.50."""
    text = f"{value.normalize():f}"
    places = len(text.partition(".")[2])
    return f"${value:.{max(2, places)}f}" if value else "$0"


def _nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return Decimal(1)
    power = Decimal(10) ** math.floor(math.log10(value))
    for step in (1, 2, Decimal("2.5"), 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _bucket_label(moment: datetime | date, hourly: bool) -> str:
    if hourly and isinstance(moment, datetime):
        return f"{moment:%H:00}" if moment.hour else f"{moment:%b %-d}"
    return f"{moment:%b %-d}"


def stacked(buckets: list[Bucket], models: list[str], *, hourly: bool) -> Stacked:
    """Cost per bucket, one segment per model, the dearest model at the bottom."""
    width, height, left, top, bottom, right = 760, 240, 56, 12, 28, 8
    plot_width, plot_height = width - left - right, height - top - bottom
    highest = max((bucket.total for bucket in buckets), default=Decimal(0))
    scale = _nice_ceiling(highest)
    step = plot_width / max(len(buckets), 1)
    gap = min(step * 0.2, 4)
    segments = []
    for i, bucket in enumerate(buckets):
        y = float(top + plot_height)
        for series, model in enumerate(models):
            cost = bucket.costs.get(model, Decimal(0))
            if cost <= 0:
                continue
            h = float(cost / scale) * plot_height
            y -= h
            segments.append(
                Segment(
                    x=_n(left + i * step + gap / 2),
                    y=_n(y),
                    width=_n(max(step - gap, 0.5)),
                    height=_n(h),
                    series=series % SERIES,
                    title=f"{_bucket_label(bucket.at, hourly)} · {model}: {money(cost)}",
                )
            )
    tick_label = (lambda v: f"${v:,.2f}") if scale >= 1 else _small_tick
    y_ticks = [
        Tick(_n(top + plot_height * (1 - n / 4)), tick_label(scale * n / 4)) for n in range(5)
    ]
    every = max(1, math.ceil(len(buckets) / 8))
    x_ticks = [
        Tick(_n(left + (i + 0.5) * step), _bucket_label(bucket.at, hourly))
        for i, bucket in enumerate(buckets)
        if i % every == 0
    ]
    return Stacked(
        width=width,
        height=height,
        left=left,
        top=top,
        plot_width=plot_width,
        plot_height=plot_height,
        segments=segments,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        legend=[(i % SERIES, model) for i, model in enumerate(models)],
        empty=highest <= 0,
    )


@dataclass(frozen=True, slots=True)
class Bar:
    y: str
    width: str
    label: str
    value: str


@dataclass(frozen=True, slots=True)
class Bars:
    """Horizontal bars, one per ranked user or agent, longest first."""

    width: int
    height: int
    label_width: int
    bar_height: int
    bars: list[Bar]


def bars(ranked: list[Ranked]) -> Bars:
    width, label_width, row, bar_height = 380, 130, 26, 16
    plot = width - label_width - 70
    highest = max((item.cost_usd for item in ranked), default=Decimal(0))
    found = [
        Bar(
            y=str(i * row),
            width=_n(float(item.cost_usd / highest) * plot) if highest > 0 else "0",
            label=item.label if len(item.label) <= 18 else item.label[:17] + "…",
            value=money(item.cost_usd),
        )
        for i, item in enumerate(ranked)
    ]
    return Bars(width, max(len(found), 1) * row, label_width, bar_height, found)
