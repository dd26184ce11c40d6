"""Formats for pages: token counts, money, sizes, percentages, audit values."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template

register = template.Library()


@register.filter
def compact(value: object) -> str:
    """12345 → 12.3k, 4200000 → 4.2M; small counts as they are, with separators."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (10_000, "k")):
        if abs(number) >= size:
            return f"{number / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{number:,}"


@register.filter
def usd(value: object) -> str:
    """A Decimal amount in dollars: cents above a dollar, four places below (calls cost
    fractions of a cent)."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ""
    places = Decimal("0.01") if abs(amount) >= 1 or not amount else Decimal("0.0001")
    return f"${amount.quantize(places, rounding=ROUND_HALF_UP):,}"


@register.filter
def percent(value: object) -> str:
    """A ratio (0.8) as a percentage (80%)."""
    try:
        ratio = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ""
    return f"{(ratio * 100).quantize(Decimal('0.1')).normalize():f}%"


@register.filter
def mib(value: object) -> str:
    """A size in MiB, in GiB from 1024 up."""
    try:
        size = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return ""
    if size >= 1024:
        return f"{size / 1024:.1f}".removesuffix(".0") + " GiB"
    return f"{size} MiB"


@register.filter
def audit_value(value: object) -> str:
    """A recorded value as people read it: booleans as on and off, the rest as they are."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


@register.filter
def pretty_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


_TONES = {
    "delete": "status-danger",
    "stop": "status-danger",
    "revoke": "status-danger",
    "suspend": "status-danger",
    "pause": "status-warning",
    "reset": "status-warning",
    "create": "status-ok",
    "enable": "status-ok",
    "start": "status-ok",
}


@register.filter
def action_tone(action: str) -> str:
    """A badge class for an audit action, by its verb (``scalingrule.pause``: a warning)."""
    return _TONES.get(str(action).rpartition(".")[2], "status-info")
