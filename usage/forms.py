"""The usage page's query: a range (a preset or custom days), a grouping, a user (operators
only) and how many rows to show. The same query yields the page, its fragment and its CSV."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from usage.selectors import GROUPINGS, Grouping

__all__ = ["MAX_RANGE", "UsageQuery", "UsageQueryForm"]

MAX_RANGE = timedelta(days=366)
PRESETS = (
    ("today", "Today"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
    ("custom", "Custom"),
)
_LAST = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
ROW_LIMITS = (("100", "100 rows"), ("500", "500 rows"), ("all", "All rows"))


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """A validated query: ``[start, end)`` in UTC, the grouping, whose usage, the row limit."""

    start: datetime
    end: datetime
    group_by: Grouping
    user_id: int | None
    limit: int | None


class UsageQueryForm(forms.Form):
    """Invalid or missing fields fall back to their defaults (the last 30 days by day), except a
    custom range that ends before it starts, which is an error the page shows."""

    range = forms.ChoiceField(choices=PRESETS, required=False)
    start = forms.DateField(required=False, label="From")
    end = forms.DateField(required=False, label="To", help_text="Included.")
    group_by = forms.ChoiceField(
        choices=[(g, g.capitalize()) for g in GROUPINGS], required=False, label="Group by"
    )
    user = forms.IntegerField(required=False, min_value=1)
    rows = forms.ChoiceField(choices=ROW_LIMITS, required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("range") == "custom":
            start, end = data.get("start"), data.get("end")
            if start is None or end is None:
                raise forms.ValidationError("A custom range needs both days.")
            if end < start:
                raise forms.ValidationError("The range ends before it starts.")
            if end - start >= MAX_RANGE:
                raise forms.ValidationError(f"A range spans at most {MAX_RANGE.days} days.")
        return data

    def query(self, *, now: datetime | None = None) -> UsageQuery:
        """The query the form asks for (call after ``is_valid()``); defaults where it asks
        nothing."""
        now = (now or timezone.now()).astimezone(UTC)
        data = self.cleaned_data if self.is_valid() else {}
        preset = data.get("range") or "30d"
        if preset == "custom" and data.get("start") and data.get("end"):
            start = datetime.combine(data["start"], time(), tzinfo=UTC)
            end = datetime.combine(data["end"], time(), tzinfo=UTC) + timedelta(days=1)
        elif preset == "today":
            start, end = now.replace(hour=0, minute=0, second=0, microsecond=0), now
        else:
            start, end = now - _LAST.get(preset, _LAST["30d"]), now
        rows = data.get("rows") or "100"
        return UsageQuery(
            start=start,
            end=end,
            group_by=data.get("group_by") or "day",
            user_id=data.get("user"),
            limit=None if rows == "all" else int(rows),
        )
