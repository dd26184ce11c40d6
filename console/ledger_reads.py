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

Two ways to read: ``usage_grouped`` sums every group of the range (one query per piece, their
small grouped results added up here), for figures that draw every group (a chart, a summary);
``usage_listed`` answers ranked lists (the dearest users and agents, a table's first rows) in
one statement: the pieces joined with ``UNION ALL``, grouped, ordered and cut with ``LIMIT`` by
the database, which also counts the groups past the limit, so only the rows shown come back.

Indexes: the roll-ups' unique keys start with ``(user, day|hour)`` (a range scan per user) and
for everyone each has a ``(day|hour, model)`` index, which also hands a grouping by time and
model its rows in order (no sort); the ledger has ``(user, created_at)`` and ``(created_at)``.
"""

from __future__ import annotations

import decimal
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum

from console.models import UsageDaily, UsageHourly, UsageRecord
from console.services.ledger_sql import bind, names

__all__ = [
    "AMOUNTS",
    "FIGURES",
    "TOKEN_KINDS",
    "Key",
    "Listed",
    "Listing",
    "finish",
    "usage_grouped",
    "usage_hours",
    "usage_listed",
    "zero",
]

Key = Literal["user", "agent", "model", "day", "hour"]

TOKEN_KINDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
AMOUNTS = ("requests", *TOKEN_KINDS, "cost_usd")
# A row's figures as ``finish`` gives them, in order: what a usage table and its CSV show.
FIGURES = ("requests", *TOKEN_KINDS, "total_tokens", "cost_usd")
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_CENT_MILLIONTHS = Decimal("0.00000001")
_COLUMN = {"user": "user_id", "agent": "agent_id", "model": "model"}
_Span = tuple[datetime, datetime]


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
    _require_aware(start, end)
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


def _require_aware(start: datetime, end: datetime) -> None:
    for moment in (start, end):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("start and end must be aware datetimes")


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


def _spans(
    start: datetime, end: datetime, days_fit: bool
) -> tuple[_Span | None, list[_Span], list[_Span]]:
    """How ``[start, end)`` (UTC) is read: whole days from the daily roll-up (if ``days_fit``),
    whole hours from the hourly one, and partial hours from the ledger (each within one hour)."""
    first_hour, last_hour = _ceil(start, _HOUR), _floor(end, _HOUR)
    if first_hour > last_hour:  # start and end lie within one hour
        return None, [], [(start, end)]
    ledger = [(lo, hi) for lo, hi in ((start, first_hour), (last_hour, end)) if lo < hi]
    if first_hour == last_hour:
        return None, [], ledger
    days = None
    hours = [(first_hour, last_hour)]
    first_day, last_day = _ceil(first_hour, _DAY), _floor(last_hour, _DAY)
    if days_fit and first_day < last_day:
        days = (first_day, last_day)
        hours = [(first_hour, first_day), (last_day, last_hour)]
    return days, [(lo, hi) for lo, hi in hours if lo < hi], ledger


def _pieces(
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    keys: tuple[Key, ...],
    amounts: tuple[str, ...],
    days_fit: bool,
) -> Iterable[tuple[tuple[Any, ...], dict[str, Any]]]:
    days, hours, edges = _spans(start, end, days_fit)
    if days is not None:
        yield from _daily(user_ids, *days, keys, amounts)
    yield from _hourly(user_ids, hours, keys, amounts)
    for lo, hi in edges:
        yield from _ledger(user_ids, lo, hi, keys, amounts)


def _of_users(rows: QuerySet[Any], user_ids: list[int] | None) -> QuerySet[Any]:
    return rows if user_ids is None else rows.filter(user_id__in=user_ids)


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


def _keyed(
    grouped: Iterable[tuple[Any, ...]], keys: tuple[Key, ...], amounts: tuple[str, ...]
) -> Iterable[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Grouped rows (the keys' values, then the amounts') as (key, amounts); a roll-up's ""
    agent is no agent."""
    for values in grouped:
        key = tuple(
            (values[i] or None) if name == "agent" else values[i] for i, name in enumerate(keys)
        )
        yield key, dict(zip(amounts, values[len(keys) :], strict=True))


def _daily(
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    keys: tuple[Key, ...],
    amounts: tuple[str, ...],
) -> Iterable[tuple[tuple[Any, ...], dict[str, Any]]]:
    rows = _of_users(UsageDaily.objects.filter(day__gte=start.date(), day__lt=end.date()), user_ids)
    columns = [_COLUMN.get(key, "day") for key in keys]
    yield from _keyed(_grouped_rows(rows, columns, amounts), keys, amounts)


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
    rows = _of_users(UsageHourly.objects.filter(within), user_ids)
    columns = [_COLUMN.get(key, "hour") for key in keys]
    yield from _keyed(_grouped_rows(rows, columns, amounts), keys, amounts)


def _ledger(
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    keys: tuple[Key, ...],
    amounts: tuple[str, ...],
) -> Iterable[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The ledger's rows of one partial hour (``start`` and ``end`` lie within one hour)."""
    rows = _of_users(
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end), user_ids
    )
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


# --- Ranked lists in one statement ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listing:
    """One list of a range's usage: its groups by ``keys`` (some of user, agent, model and day
    or hour), dearest first (``by="cost"``: by cost, then by tokens, then by key) or in the order
    of their keys (``by="key"``), at most ``limit`` of them (``None``: all). ``agents_only``
    (with ``agent`` among the keys) leaves out the calls made without an agent. Counting the
    groups past the limit costs a little: ``counted=False`` when that is not wanted."""

    keys: tuple[Key, ...]
    limit: int | None = None
    by: Literal["cost", "key"] = "cost"
    agents_only: bool = False
    counted: bool = True


@dataclass(frozen=True, slots=True)
class Listed:
    """A listing's rows, each its key (a tuple in the order of the listing's keys, valued as
    ``usage_grouped`` values them) and its sums of the amounts asked for; and how many groups
    the range has in all, those past the limit included (``None`` for a listing not
    ``counted``)."""

    rows: list[tuple[tuple[Any, ...], dict[str, Any]]]
    groups: int | None


_KEY_ORDER: tuple[Key, ...] = ("user", "agent", "model", "day", "hour")
# The type of each key column, for the NULLs a listing holds for the keys it is not grouped by.
_KEY_TYPE = {
    "user": "bigint",
    "agent": "text",
    "model": "text",
    "day": "date",
    "hour": "timestamp with time zone",
}
# SQLite sums decimals in floating point; the ORM reads such a sum to 15 significant digits.
_FLOAT_SUMS = decimal.Context(prec=15)


def usage_listed(
    *,
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    listings: Sequence[Listing],
    amounts: tuple[str, ...] = AMOUNTS,
) -> list[Listed]:
    """Each of ``listings`` over the usage in ``[start, end)`` of ``user_ids`` (``None``:
    everyone), in one statement: the range's pieces (cut as ``usage_grouped`` cuts them; days
    are UTC days) joined with ``UNION ALL`` and grouped once by every key any listing names;
    each listing groups those groups by its own keys, orders them, keeps its first ``limit``
    and counts them all. Only the rows kept come back, with the sums of ``amounts`` (fewer
    amounts, less to add up: ranking needs none). Ties in cost and tokens go to the smaller
    key (the calls of a user without an agent before those of its agents)."""
    _require_aware(start, end)
    named = {key for listing in listings for key in listing.keys}
    if not named <= set(_KEY_ORDER) or {"day", "hour"} <= named:
        raise ValueError(f"keys must be some of user, agent, model and day or hour, not {named}")
    if any(listing.agents_only and "agent" not in listing.keys for listing in listings):
        raise ValueError("agents_only needs agent among the listing's keys")
    if not amounts or not set(amounts) <= set(AMOUNTS):
        raise ValueError(f"amounts must be some of {', '.join(AMOUNTS)}, not {amounts}")
    if "cost_usd" not in amounts and any(listing.by == "cost" for listing in listings):
        raise ValueError("a listing by cost needs cost_usd among the amounts")
    if (user_ids is not None and not user_ids) or end <= start or not listings:
        return [Listed([], 0 if listing.counted else None) for listing in listings]
    base = tuple(key for key in _KEY_ORDER if key in named)
    pieces, params = _union(user_ids, start.astimezone(UTC), end.astimezone(UTC), base, amounts)
    with connection.cursor() as cursor:
        cursor.execute(_listings_sql(pieces, base, listings, amounts), params)
        rows = cursor.fetchall()
    found: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] = [[] for _ in listings]
    groups: list[int | None] = [0 if listing.counted else None for listing in listings]
    width = len(base)
    for row in rows:
        index, values = row[0], row[1 + width : 1 + width + len(amounts)]
        if values[0] is None:  # a listing by no key, over no rows
            continue
        keyed = dict(zip(base, row[1 : 1 + width], strict=True))
        sums = {
            name: _money(value) if name == "cost_usd" else int(value)
            for name, value in zip(amounts, values, strict=True)
        }
        found[index].append((tuple(_KEY_VALUE[k](keyed[k]) for k in listings[index].keys), sums))
        if listings[index].counted:
            groups[index] = int(row[-2])
    return [Listed(rows, count) for rows, count in zip(found, groups, strict=True)]


def usage_hours(
    *, user_ids: list[int] | None, start: datetime, end: datetime, limit: int | None
) -> Listed:
    """The first ``limit`` hours of ``[start, end)`` with usage (``None``: all) in time order,
    each with its sums, and how many hours have usage; in one statement.

    Each hour comes from one piece only: a whole hour from the hourly roll-up, a partial one at
    either end from the ledger. So no piece needs adding to another: the roll-up is grouped in
    the order of its hour index and read only as far as the limit reaches, and its hours are
    counted on that index."""
    _require_aware(start, end)
    if (user_ids is not None and not user_ids) or end <= start:
        return Listed([], 0)
    _days, hours, edges = _spans(start.astimezone(UTC), end.astimezone(UTC), False)
    selects: list[str] = []
    params: list[object] = []

    def where(model: type[Any], column: str, lo: datetime, hi: datetime) -> str:
        n = names(model)
        params.extend([bind(model, column, lo), bind(model, column, hi)])
        sql = f"{getattr(n, column)} >= %s AND {getattr(n, column)} < %s"
        return sql + _users_sql(model, user_ids, params)

    u = names(UsageRecord)
    ledger_sums = ", ".join(f"SUM({getattr(u, name)}) AS a_{name}" for name in AMOUNTS[1:])
    for lo, hi in edges:  # a partial hour: a row if it has calls
        params.append(bind(UsageHourly, "hour", _floor(lo, _HOUR)))
        edge = f"SELECT 0 AS n_part, %s AS k_hour, COUNT(*) AS a_requests, {ledger_sums}, "
        edge += f"1 AS n_hours FROM {u.table} WHERE "
        edge += where(UsageRecord, "created_at", lo, hi)
        selects.append(f"SELECT * FROM ({edge}) AS edge WHERE a_requests > 0")
    if hours:  # the whole hours, each row with the count of them all
        ((lo, hi),) = hours
        h = names(UsageHourly)
        count = f"SELECT COUNT(DISTINCT {h.hour}) FROM {h.table} WHERE "
        count += where(UsageHourly, "hour", lo, hi)
        sums = ", ".join(f"SUM({getattr(h, name)}) AS a_{name}" for name in AMOUNTS)
        grouped = f"SELECT {h.hour} AS k_hour, {sums} FROM {h.table} WHERE "
        grouped += f"{where(UsageHourly, 'hour', lo, hi)} GROUP BY {h.hour} ORDER BY {h.hour}"
        if limit is not None:
            grouped += f" LIMIT {int(limit)}"
        # The count's parameters were bound first, as it comes first.
        selects.append(
            f"SELECT 1 AS n_part, whole.*, ({count}) AS n_hours FROM ({grouped}) AS whole"
        )
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(selects), params)
        rows = cursor.fetchall()
    found = []
    counted = {0: 0, 1: 0}
    for part, hour, *amounts, count in rows:
        sums = {name: int(amounts[i]) for i, name in enumerate(AMOUNTS[:-1])}
        sums["cost_usd"] = _money(amounts[-1])
        found.append(((_as_hour(hour),), sums))
        counted[part] = counted[part] + 1 if part == 0 else int(count)
    found.sort(key=lambda item: item[0])
    return Listed(found if limit is None else found[:limit], counted[0] + counted[1])


def _money(value: Any) -> Decimal:
    if isinstance(value, float):
        value = _FLOAT_SUMS.create_decimal_from_float(value)
    return Decimal(value).quantize(_CENT_MILLIONTHS)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def _as_hour(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)  # SQLite: naive UTC text


_KEY_VALUE: dict[str, Any] = {
    "user": int,
    "agent": lambda value: value or None,
    "model": str,
    "day": _as_date,
    "hour": _as_hour,
}


def _listings_sql(
    pieces: str, base: tuple[Key, ...], listings: Sequence[Listing], amounts: tuple[str, ...]
) -> str:
    """``pieces`` grouped by ``base``, then each listing from those groups, in order: columns
    ``n_listing``, every base key (NULL where the listing is not grouped by it), the sums of
    ``amounts`` and of ``a_tokens``, ``n_groups`` (NULL where not counted) and ``n_place``."""
    base_columns = [f"k_{key}" for key in base]
    sums = ", ".join(f"SUM(a_{name}) AS a_{name}" for name in (*amounts, "tokens"))
    grouped = f"SELECT {', '.join([*base_columns, sums])} FROM ({pieces}) AS pieces"
    if base:
        grouped += f" GROUP BY {', '.join(base_columns)}"
    sums_as_grouped = ", ".join(f"a_{name}" for name in (*amounts, "tokens"))
    branches = []
    for i, listing in enumerate(listings):
        keys = [f"k_{key}" for key in base if key in listing.keys]
        # A listing by every base key takes the groups as they are; another adds them up.
        regroup = len(keys) < len(base)
        cost, tokens = (
            ("SUM(a_cost_usd)", "SUM(a_tokens)") if regroup else ("a_cost_usd", "a_tokens")
        )
        if listing.by == "cost":
            order = ", ".join([f"{cost} DESC", f"{tokens} DESC", *keys])
        else:
            order = ", ".join(keys) or "1"
        columns = [
            f"k_{key}" if key in listing.keys else f"CAST(NULL AS {_KEY_TYPE[key]}) AS k_{key}"
            for key in base
        ]
        count = "COUNT(*) OVER ()" if listing.counted else "CAST(NULL AS bigint)"
        branch = (
            f"SELECT {i} AS n_listing, {', '.join(columns)}, "
            f"{sums if regroup else sums_as_grouped}, {count} AS n_groups, "
            f"ROW_NUMBER() OVER (ORDER BY {order}) AS n_place FROM grouped"
        )
        if listing.agents_only:
            branch += " WHERE k_agent <> ''"
        if regroup and keys:
            branch += f" GROUP BY {', '.join(keys)}"
        branch += f" ORDER BY {order}"
        if listing.limit is not None:
            branch += f" LIMIT {int(listing.limit)}"
        branches.append(f"SELECT * FROM ({branch}) AS listing_{i}")
    union = " UNION ALL ".join(branches)
    return f"WITH grouped AS ({grouped}) {union} ORDER BY n_listing, n_place"


def _union(
    user_ids: list[int] | None,
    start: datetime,
    end: datetime,
    keys: tuple[Key, ...],
    amounts: tuple[str, ...],
) -> tuple[str, list[object]]:
    """The rows of ``[start, end)`` (UTC) from each piece, as one ``UNION ALL``: columns
    ``k_<key>`` for ``keys``, ``a_<amount>`` for ``amounts`` and ``a_tokens``, the four kinds
    added up (a ledger row is one request; its partial hour gives its day and hour)."""
    days, hours, edges = _spans(start, end, "hour" not in keys)
    selects: list[str] = []
    params: list[object] = []

    def add(
        model: type[Any],
        columns: dict[str, str],
        where: str,
        where_params: list[object],
        column_params: dict[str, object] | None = None,
    ) -> None:
        n = names(model)
        listed = [f"{columns[key]} AS k_{key}" for key in keys]
        listed += [f"{columns.get(name) or getattr(n, name)} AS a_{name}" for name in amounts]
        listed.append(f"{' + '.join(getattr(n, kind) for kind in TOKEN_KINDS)} AS a_tokens")
        params.extend((column_params or {})[key] for key in keys if columns[key] == "%s")
        params.extend(where_params)
        sql = f"SELECT {', '.join(listed)} FROM {n.table} WHERE {where}"
        selects.append(sql + _users_sql(model, user_ids, params))

    if days is not None:
        d = names(UsageDaily)
        add(
            UsageDaily,
            {"user": d.user_id, "agent": d.agent_id, "model": d.model, "day": d.day},
            f"{d.day} >= %s AND {d.day} < %s",
            [bind(UsageDaily, "day", days[0].date()), bind(UsageDaily, "day", days[1].date())],
        )
    if hours:
        h = names(UsageHourly)
        add(
            UsageHourly,
            {
                "user": h.user_id,
                "agent": h.agent_id,
                "model": h.model,
                "day": _day_of(h.hour),
                "hour": h.hour,
            },
            "(" + " OR ".join(f"({h.hour} >= %s AND {h.hour} < %s)" for _ in hours) + ")",
            [bind(UsageHourly, "hour", moment) for span in hours for moment in span],
        )
    u = names(UsageRecord)
    ledger = {
        "user": u.user_id,
        "agent": _agent_text(u.agent_id),
        "model": u.model,
        "day": "%s",
        "hour": "%s",
        "requests": "1",
    }
    for lo, hi in edges:
        hour = _floor(lo, _HOUR)
        add(
            UsageRecord,
            ledger,
            f"{u.created_at} >= %s AND {u.created_at} < %s",
            [bind(UsageRecord, "created_at", lo), bind(UsageRecord, "created_at", hi)],
            {"day": bind(UsageDaily, "day", hour.date()), "hour": bind(UsageHourly, "hour", hour)},
        )
    return " UNION ALL ".join(selects), params


def _users_sql(model: type[Any], user_ids: list[int] | None, params: list[object]) -> str:
    """The condition `` AND user_id IN (...)`` on ``model``'s table ("" for everyone), its
    parameters appended to ``params``."""
    if user_ids is None:
        return ""
    params.extend(bind(model, "user_id", pk) for pk in user_ids)
    return f" AND {names(model).user_id} IN ({', '.join(['%s'] * len(user_ids))})"


def _day_of(hour: str) -> str:
    """The UTC day of an hour column, as the daily roll-up holds days."""
    if connection.vendor == "postgresql":
        return f"CAST({hour} AT TIME ZONE 'UTC' AS date)"
    return f"substr({hour}, 1, 10)"  # SQLite holds 'YYYY-MM-DD HH:MM:SS'


def _agent_text(agent_id: str) -> str:
    """The ledger's agent as the roll-ups hold it: the UUID's text, or '' for none."""
    if connection.vendor == "postgresql":
        return f"COALESCE(CAST({agent_id} AS text), '')"
    # SQLite holds a UUID as its 32 hex digits; NULL (no agent) stays NULL through ||.
    parts = " || '-' || ".join(
        f"substr({agent_id}, {at}, {n})" for at, n in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    )
    return f"COALESCE({parts}, '')"


def _floor(moment: datetime, step: timedelta) -> datetime:
    if step == _DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil(moment: datetime, step: timedelta) -> datetime:
    floor = _floor(moment, step)
    return floor if floor == moment else floor + step
