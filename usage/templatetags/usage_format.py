"""Formats for the usage pages."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template
from django.utils.html import escape
from django.utils.safestring import mark_safe

from console.ledger_reads import FIGURES
from console.templatetags.console_format import usd

register = template.Library()


@register.filter
def grouped(value: object) -> str:
    """A whole number with thousands separators: 1234567 → 1,234,567."""
    try:
        return f"{int(value):,}"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return "" if value is None else str(value)


_COUNTS = FIGURES[:-1]  # then the cost


@register.simple_tag
def usage_cells(row: dict[str, Any]) -> str:
    """A usage table row's amounts as its cells, each with its exact value in ``data-value``
    (what the CSV holds) and shown for reading: counts with separators, the cost in dollars
    (its exact amount in the title). One tag for a row's fourteen figures keeps a table of
    hundreds of rows cheap to render; its text is only digits, signs, commas and points,
    nothing to escape."""
    cells = [
        f'<td class="num" data-value="{int(row[name])}">{int(row[name]):,}</td>' for name in _COUNTS
    ]
    cost = Decimal(row["cost_usd"])
    cells.append(f'<td class="num" data-value="{cost}" title="${cost}">{usd(cost)}</td>')
    return mark_safe("".join(cells))


@register.simple_tag
def usage_segments(segments: list[Any]) -> str:
    """The stacked chart's bars, one ``<rect>`` per model in each bucket with its label as its
    title (escaped; the coordinates are numbers). In one tag: a month of hours draws hundreds."""
    return mark_safe(
        "".join(
            f'<rect class="usage-s{int(s.series)}" x="{s.x}" y="{s.y}" width="{s.width}" '
            f'height="{s.height}"><title>{escape(s.title)}</title></rect>'
            for s in segments
        )
    )


@register.simple_tag
def user_options(users: list[tuple[str, str, bool]]) -> str:
    """The User filter's options (value, name, chosen), names escaped; every user is one."""
    options = []
    for value, name, chosen in users:
        selected = " selected" if chosen else ""
        options.append(f'<option value="{escape(value)}"{selected}>{escape(name)}</option>')
    return mark_safe("".join(options))
