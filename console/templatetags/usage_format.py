"""Formats for the usage pages."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def grouped(value: object) -> str:
    """A whole number with thousands separators: 1234567 → 1,234,567."""
    try:
        return f"{int(value):,}"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return "" if value is None else str(value)
