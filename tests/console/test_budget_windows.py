"""Budget windows: calendar days and months in the quota's time zone, and rolling hours."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest

from console.models import Budget
from console.services import budget_window

DAY, MONTH, ROLLING = Budget.Window.DAY, Budget.Window.MONTH, Budget.Window.ROLLING


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def window_in_utc(budget: Budget, tz: str, now: datetime) -> tuple[datetime, datetime]:
    # Compared in UTC: Python never finds a time in a zone's gap or fold equal to one elsewhere.
    start, end = budget_window(budget, tz, now)
    return start.astimezone(UTC), end.astimezone(UTC)


@pytest.mark.parametrize(
    ("tz", "now", "start", "end"),
    [
        # Paris springs forward on 30 March 2025: that day lasts 23 hours.
        ("Europe/Paris", _utc(2025, 3, 30, 12), _utc(2025, 3, 29, 23), _utc(2025, 3, 30, 22)),
        # ... and falls back on 26 October 2025: 25 hours.
        ("Europe/Paris", _utc(2025, 10, 26, 12), _utc(2025, 10, 25, 22), _utc(2025, 10, 26, 23)),
        # Just after midnight in India (UTC+05:30) is still the day before in UTC.
        (
            "Asia/Kolkata",
            _utc(2025, 6, 30, 18, 45),
            _utc(2025, 6, 30, 18, 30),
            _utc(2025, 7, 1, 18, 30),
        ),
        (
            "Asia/Kolkata",
            _utc(2025, 6, 30, 18, 15),
            _utc(2025, 6, 29, 18, 30),
            _utc(2025, 6, 30, 18, 30),
        ),
        # Santiago springs forward at midnight: 8 September 2024 begins at 01:00 local.
        ("America/Santiago", _utc(2024, 9, 8, 12), _utc(2024, 9, 8, 4), _utc(2024, 9, 9, 3)),
        ("UTC", _utc(2025, 1, 1, 0, 0, 0), _utc(2025, 1, 1), _utc(2025, 1, 2)),
    ],
)
def test_a_calendar_day_runs_from_midnight_to_midnight_in_the_quotas_zone(tz, now, start, end):
    assert window_in_utc(Budget(window=DAY), tz, now) == (start, end)


@pytest.mark.parametrize(
    ("tz", "now", "start", "end"),
    [
        # A leap February has 29 days, another 28.
        ("UTC", _utc(2024, 2, 29, 23, 59, 59), _utc(2024, 2, 1), _utc(2024, 3, 1)),
        ("UTC", _utc(2023, 2, 15), _utc(2023, 2, 1), _utc(2023, 3, 1)),
        # The last second of a year, then the same instant where it is already next year.
        ("UTC", _utc(2025, 12, 31, 23, 59, 59), _utc(2025, 12, 1), _utc(2026, 1, 1)),
        (
            "Asia/Kolkata",
            _utc(2025, 12, 31, 23, 59, 59),
            _utc(2025, 12, 31, 18, 30),
            _utc(2026, 1, 31, 18, 30),
        ),
        # A month ends at local midnight: at 22:00 on 28 February in New York it is still February.
        ("America/New_York", _utc(2025, 3, 1, 3), _utc(2025, 2, 1, 5), _utc(2025, 3, 1, 5)),
        # A month across a change of clocks begins at +01:00 and ends at +02:00.
        ("Europe/Paris", _utc(2025, 3, 15), _utc(2025, 2, 28, 23), _utc(2025, 3, 31, 22)),
        # The first instant of a month is in it.
        ("UTC", _utc(2025, 4, 1), _utc(2025, 4, 1), _utc(2025, 5, 1)),
    ],
)
def test_a_calendar_month_runs_from_its_first_local_midnight_to_the_next_months(
    tz, now, start, end
):
    assert window_in_utc(Budget(window=MONTH), tz, now) == (start, end)


@pytest.mark.parametrize(
    "tz",
    [
        "UTC",
        "Europe/Paris",
        "Asia/Kolkata",
        "America/St_Johns",  # -03:30, with DST
        "Australia/Lord_Howe",  # a half-hour change of clocks
        "America/Santiago",  # clocks change at midnight
        "America/Havana",  # clocks go back at 01:00: midnight happens twice
        "Pacific/Kiritimati",  # +14:00
    ],
)
@pytest.mark.parametrize("window", [DAY, MONTH])
def test_calendar_windows_follow_each_other_without_gap_or_overlap(tz, window):
    zone = zoneinfo.ZoneInfo(tz)
    budget = Budget(window=window)
    now = _utc(2024, 1, 1, 7, 13)
    start, end = window_in_utc(budget, tz, now)
    for _ in range(400 if window == DAY else 14):
        assert start <= now < end
        # A window begins at the first instant of its local day (midnight, or 01:00 where the
        # clocks skip midnight): the second before it is the day before.
        first_day = start.astimezone(zone).date()
        assert (start - timedelta(seconds=1)).astimezone(zone).date() < first_day
        assert first_day == now.astimezone(zone).date()  # the probe is on the window's first day
        assert window == DAY or first_day.day == 1
        # Probe the window's last second and its first, and move on to the next window.
        assert window_in_utc(budget, tz, end - timedelta(seconds=1)) == (start, end)
        following = window_in_utc(budget, tz, end)
        assert following[0] == end
        now, (start, end) = end + timedelta(hours=5), following


@pytest.mark.parametrize(
    ("hours", "now", "start", "end"),
    [
        (1, _utc(2025, 5, 5, 10, 17), _utc(2025, 5, 5, 10), _utc(2025, 5, 5, 11)),
        (24, _utc(2025, 5, 5, 10, 17), _utc(2025, 5, 4, 11), _utc(2025, 5, 5, 11)),
        (5, _utc(2025, 1, 1, 2, 0), _utc(2024, 12, 31, 22), _utc(2025, 1, 1, 3)),
    ],
)
def test_a_rolling_window_is_the_current_clock_hour_and_the_hours_before(hours, now, start, end):
    budget = Budget(window=ROLLING, rolling_hours=hours)
    # Rolling windows ignore the zone: an hour is an hour everywhere.
    assert window_in_utc(budget, "Asia/Kolkata", now) == (start, end)
    assert window_in_utc(budget, "UTC", now) == (start, end)
