"""Usage over any range, grouped by any of user, agent, model and a day or an hour: sums read
from the roll-ups wherever they cover whole periods, and from the ledger at the edges.

A range ``[start, end)`` is cut into pieces, each read from the coarsest table that is exact
for it:

- whole UTC days from the daily roll-up (``UsageDaily``), when the grouping needs no finer time
  than a UTC day;
- whole hours outside those days from the hourly roll-up (``UsageHourly``), in one query;
- the partial hours at each end from the ledger itself (``UsageRecord``), one query each.

So a 30-day range of everyone's usage reads some thirty days of daily rows, up to 46 hours of
hourly rows and two hours of calls, and is as exact as the ledger. Both roll-ups are written in
the same transaction as each ledger row (``console.services.ledger``).

Indexes: the roll-ups' unique keys start with ``(user, day|hour)`` (a range scan per user) and
each has a ``(day|hour)`` index for everyone; the ledger has ``(user, created_at)`` and
``(created_at)``.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.db.models import Count, Q, QuerySet, Sum

from console.models import UsageDaily, UsageHourly, UsageRecord

__all__ = ["AMOUNTS", "TOKEN_KINDS", "Key", "finish", "usage_grouped", "zero"]

Key = Literal["user", "agent", "model", "day", "hour"]

TOKEN_KINDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
AMOUNTS = ("requests", *TOKEN_KINDS, "cost_usd")
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_CENT_MILLIONTHS = Decimal("0.00000001")
_COLUMN = {"user": "user_id", "agent": "agent_id", "model": "model"}


def usage_grouped(
    *,
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    keys: tuple[Key, ...],
    amounts: tuple[str, ...] = AMOUNTS,
    tz: str = "UTC",
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Usage in ``[start, end)`` of ``user_ids`` (``None``: everyone), summed per distinct
    ``keys``: a tuple of values in the order of ``keys`` maps to the sums of ``amounts``
    (``requests``, the token kinds, ``cost_usd``: a ``Decimal``).

    Key values: ``user`` a user id; ``agent`` an agent id as a string, or ``None`` for calls
    made without an agent; ``model`` a name; ``day`` a date in ``tz``; ``hour`` an aware UTC
    datetime. At most one of ``day`` and ``hour``. Days in a zone other than UTC are read from
    hours (each hour counts in the day it began in, exact for whole-hour offsets).
    """
    for moment in (start, end):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("start and end must be aware datetimes")
    unknown = set(keys) - {"user", "agent", "model", "day", "hour"}
    if unknown or ("day" in keys and "hour" in keys):
        raise ValueError(f"keys must be some of user, agent, model and day or hour, not {keys}")
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    if (user_ids is not None and not user_ids) or end <= start:
        return found
    zone = zoneinfo.ZoneInfo(tz)
    days_fit = "hour" not in keys and ("day" not in keys or tz == "UTC")
    pieces = _pieces(user_ids, start.astimezone(UTC), end.astimezone(UTC), keys, amounts, days_fit)
    for key, row in pieces:
        if "day" in keys:
            i = keys.index("day")
            if isinstance(key[i], datetime):
                key = (*key[:i], key[i].astimezone(zone).date(), *key[i + 1 :])
        into = found.get(key)
        if into is None:
            found[key] = {name: row[name] or 0 for name in amounts}
        else:
            for name in amounts:
                into[name] += row[name] or 0
    if "cost_usd" in amounts:  # SQLite sums in floating point: back to the ledger's places
        for sums in found.values():
            sums["cost_usd"] = Decimal(sums["cost_usd"]).quantize(_CENT_MILLIONTHS)
    return found


def zero(amounts: tuple[str, ...] = AMOUNTS) -> dict[str, Any]:
    return {name: Decimal(0) if name == "cost_usd" else 0 for name in amounts}


def finish(values: dict[str, Any]) -> dict[str, Any]:
    """The sums with ``total_tokens`` (all four kinds) after the kinds, when they are there."""
    if not all(kind in values for kind in TOKEN_KINDS):
        return dict(values)
    done = {name: values[name] for name in ("requests", *TOKEN_KINDS) if name in values}
    done["total_tokens"] = sum(values[kind] for kind in TOKEN_KINDS)
    if "cost_usd" in values:
        done["cost_usd"] = values["cost_usd"]
    return done


# --- The pieces of a range -----------------------------------------------------------------------


def _pieces(
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    keys: tuple[Key, ...],
    amounts: tuple[str, ...],
    days_fit: bool,
) -> Iterable[tuple[tuple[Any, ...], dict[str, Any]]]:
    first_hour, last_hour = _ceil(start, _HOUR), _floor(end, _HOUR)
    if first_hour >= last_hour:  # no whole hour inside: only ledger rows
        yield from _ledger(user_ids, start, end, keys, amounts)
        return
    hours = [(first_hour, last_hour)]
    first_day, last_day = _ceil(first_hour, _DAY), _floor(last_hour, _DAY)
    if days_fit and first_day < last_day:
        yield from _daily(user_ids, first_day, last_day, keys, amounts)
        hours = [(first_hour, first_day), (last_day, last_hour)]
    yield from _hourly(user_ids, [(lo, hi) for lo, hi in hours if lo < hi], keys, amounts)
    for lo, hi in ((start, first_hour), (last_hour, end)):
        if lo < hi:
            yield from _ledger(user_ids, lo, hi, keys, amounts)


def _sums(amounts: tuple[str, ...], *, ledger: bool) -> dict[str, Any]:
    return {name: Count("id") if ledger and name == "requests" else Sum(name) for name in amounts}


def _grouped_rows(
    rows: QuerySet[Any], columns: list[str], amounts: tuple[str, ...], *, ledger: bool = False
) -> Iterable[tuple[Any, ...]]:
    sums = _sums(amounts, ledger=ledger)
    if not columns:
        row = rows.aggregate(**sums)
        if any(row[name] for name in amounts):  # else no rows (or only empty ones)
            yield tuple(row[name] for name in amounts)
        return
    yield from rows.order_by().values_list(*columns).annotate(**sums)


def _daily(
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    keys: tuple[Key, ...],
    amounts: tuple[str, ...],
) -> Iterable[tuple[tuple[Any, ...], dict[str, Any]]]:
    rows: QuerySet[Any] = UsageDaily.objects.filter(day__gte=start.date(), day__lt=end.date())
    if user_ids is not None:
        rows = rows.filter(user_id__in=user_ids)
    columns = [_COLUMN.get(key, "day") for key in keys]
    for values in _grouped_rows(rows, columns, amounts):
        key = tuple(
            (values[i] or None) if name == "agent" else values[i] for i, name in enumerate(keys)
        )
        yield key, dict(zip(amounts, values[len(keys) :], strict=True))


def _hourly(
    user_ids: list[int] | None,
    spans: list[tuple[datetime, datetime]],
    keys: tuple[Key, ...],
    amounts: tuple[str, ...],
) -> Iterable[tuple[tuple[Any, ...], dict[str, Any]]]:
    if not spans:
        return
    within = Q()
    for lo, hi in spans:
        within |= Q(hour__gte=lo, hour__lt=hi)
    rows: QuerySet[Any] = UsageHourly.objects.filter(within)
    if user_ids is not None:
        rows = rows.filter(user_id__in=user_ids)
    columns = [_COLUMN.get(key, "hour") for key in keys]
    for values in _grouped_rows(rows, columns, amounts):
        key = tuple(
            (values[i] or None) if name == "agent" else values[i] for i, name in enumerate(keys)
        )
        yield key, dict(zip(amounts, values[len(keys) :], strict=True))


def _ledger(
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    keys: tuple[Key, ...],
    amounts: tuple[str, ...],
) -> Iterable[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The ledger's rows of one partial hour (``start`` and ``end`` lie within one hour)."""
    rows: QuerySet[Any] = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
    if user_ids is not None:
        rows = rows.filter(user_id__in=user_ids)
    columns = [_COLUMN[key] for key in keys if key in _COLUMN]
    hour = _floor(start, _HOUR)
    for values in _grouped_rows(rows, columns, amounts, ledger=True):
        sums = dict(zip(amounts, values[len(columns) :], strict=True))
        given = iter(values)
        key = []
        for name in keys:
            if name in ("day", "hour"):
                key.append(hour)
            else:
                value = next(given)
                key.append(str(value) if name == "agent" and value is not None else value)
        yield tuple(key), sums


def _floor(moment: datetime, step: timedelta) -> datetime:
    if step == _DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil(moment: datetime, step: timedelta) -> datetime:
    floor = _floor(moment, step)
    return floor if floor == moment else floor + step
