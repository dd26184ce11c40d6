"""Number formats for pages: token counts, money, percentages."""

from __future__ import annotations

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
    places = Decimal("0.01") if abs(amount) >= 1 else Decimal("0.0001")
    return f"${amount.quantize(places, rounding=ROUND_HALF_UP):,}"


@register.filter
def percent(value: object) -> str:
    """A ratio (0.8) as a percentage (80%)."""
    try:
        ratio = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ""
    return f"{(ratio * 100).quantize(Decimal('0.1')).normalize():f}%"
