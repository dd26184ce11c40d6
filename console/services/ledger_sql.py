"""The statements of the gateway's hot path, written as SQL for SQLite and PostgreSQL alike.

Every gateway call is authenticated, then admitted and settled under its user's quota row lock:
some fifteen statements. Through the ORM one call cost 3.7 ms of CPU in process on SQLite,
nearly all of it compiling querysets, where the same statements as SQL take about 0.2 ms. So
the caller's API key (``accounts.py``), the admission and settlement of a call (``limits.py``)
and its ledger row and hourly roll-up (``ledger.py``) are read and written by the functions
here, one statement each; the gateway reads an agent's token the same way, with the helpers of
the first section.

The SQL is still the models': table and column names come from ``_meta``, every value bound
goes through its field's ``get_db_prep_save`` (a UUID is 32 hex digits on SQLite and a ``uuid``
on PostgreSQL, a datetime naive UTC text on SQLite) and every value read back through the
converters the ORM applies, into instances made by ``Model.from_db``, as a queryset's
``only()`` and ``select_related()`` give them. Both backends have upserts (``ON CONFLICT … DO
UPDATE``) and ``RETURNING`` (SQLite from 3.35); ``FOR UPDATE`` is only where the backend has it
(SQLite serializes write transactions anyway).
"""

from __future__ import annotations

import functools
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model, Sum
from django.db.models.expressions import BaseExpression

from console.models import (
    ApiKey,
    Budget,
    Quota,
    RateCounter,
    Refusal,
    Reservation,
    UsageDaily,
    UsageHourly,
    UsageRecord,
    User,
)

__all__ = [
    "QUOTA_LIMITS",
    "api_key_of",
    "bind",
    "budget_restart",
    "budgets_of",
    "budgets_reserve",
    "budgets_settle",
    "columns",
    "converted",
    "daily_add",
    "fetchone",
    "fields",
    "hourly_add",
    "hourly_spend",
    "in_flight",
    "load",
    "names",
    "quota_lock",
    "rate_bump",
    "rate_requests",
    "rate_tokens_add",
    "refusal_count",
    "reservation_insert",
    "reservation_take",
    "usage_insert",
    "with_quota",
]

M = TypeVar("M", bound=Model)
Converter = Callable[[Any, Any, BaseDatabaseWrapper], Any]


# --- Names, values in and values out -------------------------------------------------------------


class _Names:
    """A model's quoted table name (``.table``) and column names (by attribute name)."""

    def __init__(self, model: type[Model]) -> None:
        quote = connection.ops.quote_name
        self.table = quote(model._meta.db_table)
        for field in model._meta.concrete_fields:
            setattr(self, field.attname, quote(field.column))

    def __getattr__(self, name: str) -> str:  # for the type checker; __init__ set them all
        raise AttributeError(name)


@functools.cache
def _names_for(model: type[Model], vendor: str) -> _Names:
    return _Names(model)


def names(model: type[Model]) -> _Names:
    """The model's table and column names, quoted: ``names(Budget).reserved``."""
    return _names_for(model, connection.vendor)


def fields(model: type[Model], attnames: Iterable[str] | None = None) -> tuple[str, ...]:
    """The model's field attribute names (or those of ``attnames``), in the model's order: the
    order ``load`` wants its columns in."""
    concrete = model._meta.concrete_fields
    if attnames is None:
        return tuple(field.attname for field in concrete)
    wanted = set(attnames)
    return tuple(field.attname for field in concrete if field.attname in wanted)


def columns(model: type[Model], attnames: Iterable[str], *, qualified: bool = False) -> str:
    """The columns of ``attnames``, comma-separated; ``qualified`` prefixes the table's name."""
    return _columns_for(model, tuple(attnames), qualified, connection.vendor)


@functools.cache
def _columns_for(
    model: type[Model], attnames: tuple[str, ...], qualified: bool, vendor: str
) -> str:
    quoted = names(model)
    prefix = f"{quoted.table}." if qualified else ""
    return ", ".join(prefix + getattr(quoted, attname) for attname in attnames)


@functools.cache
def _unique_for(model: type[Model], constraint: str, vendor: str) -> str:
    (unique,) = (c for c in model._meta.constraints if c.name == constraint)
    return columns(model, [model._meta.get_field(name).attname for name in unique.fields])


def _unique(model: type[Model], constraint: str) -> str:
    """The columns of the model's unique constraint ``constraint``, for ``ON CONFLICT (…)``."""
    return _unique_for(model, constraint, connection.vendor)


def bind(model: type[Model], attname: str, value: object) -> object:
    """``value`` as the ORM sends it to the database for this field."""
    return model._meta.get_field(attname).get_db_prep_save(value, connection)


def _binds(model: type[Model], values: dict[str, object]) -> list[object]:
    return [bind(model, attname, value) for attname, value in values.items()]


def _marks(count: int) -> str:
    return ", ".join(["%s"] * count)


# The converters of a connection are bound to its operations, and each thread has its own
# connection: keep them per connection (working them out costs some 20 µs a row).
_converters_of: weakref.WeakKeyDictionary[BaseDatabaseWrapper, dict[object, list[Any]]] = (
    weakref.WeakKeyDictionary()
)


def _converters(
    key: object, expressions: Callable[[], list[BaseExpression]]
) -> list[tuple[BaseExpression, list[Converter]]]:
    """What the ORM applies to a value read for each expression: the backend's converters,
    then the field's."""
    wrapper = connections[DEFAULT_DB_ALIAS]
    known = _converters_of.setdefault(wrapper, {})
    if key not in known:
        known[key] = [
            (
                expression,
                wrapper.ops.get_db_converters(expression) + expression.get_db_converters(wrapper),
            )
            for expression in expressions()
        ]
    return known[key]


def _convert(
    row: Sequence[object], converters: list[tuple[BaseExpression, list[Converter]]]
) -> list[object]:
    values = list(row)
    for i, (expression, functions) in enumerate(converters):
        for function in functions:
            values[i] = function(values[i], expression, connection)
    return values


def load(model: type[M], attnames: tuple[str, ...], row: Sequence[object]) -> M:
    """The instance that ``model.objects.only(*attnames)`` makes of ``row``, the values of
    ``attnames`` (in the model's order, see ``fields``) as the database gave them."""
    table = model._meta.db_table
    converters = _converters(
        (model, attnames),
        lambda: [model._meta.get_field(attname).get_col(table) for attname in attnames],
    )
    return model.from_db(connection.alias, attnames, _convert(row, converters))


def converted(
    model: type[Model], attnames: tuple[str, ...], rows: Iterable[Sequence[object]]
) -> list[list[object]]:
    """``rows`` of the columns of ``attnames`` (in that order), each value converted as the
    ORM's ``values_list`` converts it."""
    table = model._meta.db_table
    converters = _converters(
        ("values", model, attnames),
        lambda: [model._meta.get_field(attname).get_col(table) for attname in attnames],
    )
    return [_convert(row, converters) for row in rows]


def fetchone(sql: str, params: Sequence[object]) -> tuple[Any, ...] | None:
    """Run one statement; its first row."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _execute(sql: str, params: Sequence[object]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _for_update() -> str:
    return " FOR UPDATE" if connection.features.has_select_for_update else ""


# --- Callers -------------------------------------------------------------------------------------

_API_KEY, _USER, _QUOTA = fields(ApiKey), fields(User), fields(Quota)


def api_key_of(key_hash: str) -> ApiKey | None:
    """The API key of ``key_hash`` with its user and the user's quota (``None`` when it has
    none), as ``ApiKey.objects.select_related("user", "user__quota")`` gives them."""
    k, u, q = names(ApiKey), names(User), names(Quota)
    row = fetchone(
        f"SELECT {columns(ApiKey, _API_KEY, qualified=True)}, "
        f"{columns(User, _USER, qualified=True)}, {columns(Quota, _QUOTA, qualified=True)} "
        f"FROM {k.table} INNER JOIN {u.table} ON {k.table}.{k.user_id} = {u.table}.{u.id} "
        f"LEFT OUTER JOIN {q.table} ON {q.table}.{q.user_id} = {u.table}.{u.id} "
        f"WHERE {k.table}.{k.key_hash} = %s",
        [bind(ApiKey, "key_hash", key_hash)],
    )
    if row is None:
        return None
    user_starts, quota_starts = len(_API_KEY), len(_API_KEY) + len(_USER)
    key = load(ApiKey, _API_KEY, row[:user_starts])
    user = load(User, _USER, row[user_starts:quota_starts])
    quota = load(Quota, _QUOTA, row[quota_starts:]) if row[quota_starts] is not None else None
    ApiKey._meta.get_field("user").set_cached_value(key, user)
    with_quota(user, quota)
    return key


def with_quota(user: User, quota: Quota | None) -> None:
    """Cache the user's quota (``None``: they have none) on both, as ``select_related`` does."""
    User._meta.get_field("quota").set_cached_value(user, quota)
    if quota is not None:
        Quota._meta.get_field("user").set_cached_value(quota, user)


# --- Quota and budgets ---------------------------------------------------------------------------


QUOTA_LIMITS = fields(
    Quota,
    (
        "id",
        "user_id",
        "is_suspended",
        "requests_per_minute",
        "tokens_per_minute",
        "concurrent_requests",
        "timezone",
    ),
)
_BUDGET = fields(Budget, ("id", "user_id", *Budget.LIMIT_FIELDS, *Budget.COUNTER_FIELDS))


def quota_lock(user_id: int) -> Quota | None:
    """The user's quota, its row locked until the transaction ends (limits and time zone only:
    the other fields are deferred)."""
    q = names(Quota)
    row = fetchone(
        f"SELECT {columns(Quota, QUOTA_LIMITS)} FROM {q.table} "
        f"WHERE {q.user_id} = %s{_for_update()}",
        [bind(Quota, "user_id", user_id)],
    )
    return load(Quota, QUOTA_LIMITS, row) if row is not None else None


def budgets_of(user_id: int) -> list[Budget]:
    """The user's budgets, in the model's order (metric, window); call with the quota locked."""
    b = names(Budget)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns(Budget, _BUDGET)} FROM {b.table} WHERE {b.user_id} = %s "
            f"ORDER BY {b.metric}, {b.window}, {b.id}",
            [bind(Budget, "user_id", user_id)],
        )
        return [load(Budget, _BUDGET, row) for row in cursor.fetchall()]


def budget_restart(budget_id: int, start: datetime) -> None:
    """Start the budget's calendar window afresh at ``start``."""
    b = names(Budget)
    _execute(
        f"UPDATE {b.table} SET {b.used} = %s, {b.window_started_at} = %s WHERE {b.id} = %s",
        [
            bind(Budget, "used", Decimal(0)),
            bind(Budget, "window_started_at", start),
            bind(Budget, "id", budget_id),
        ],
    )


def budgets_reserve(amounts: list[tuple[int, Decimal]]) -> None:
    """Add each (budget id, amount) to what the budget holds for calls in flight."""
    if not amounts:
        return
    b = names(Budget)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {b.table} SET {b.reserved} = {b.reserved} + %s WHERE {b.id} = %s",
            [(bind(Budget, "reserved", amount), bind(Budget, "id", pk)) for pk, amount in amounts],
        )


def budgets_settle(changes: list[tuple[int, Decimal, Decimal]]) -> None:
    """Set each (budget id, reserved, spent) budget's reserved amount, and add to its spend."""
    if not changes:
        return
    b = names(Budget)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {b.table} SET {b.reserved} = %s, {b.used} = {b.used} + %s WHERE {b.id} = %s",
            [
                (
                    bind(Budget, "reserved", reserved),
                    bind(Budget, "used", spent),
                    bind(Budget, "id", pk),
                )
                for pk, reserved, spent in changes
            ],
        )


def hourly_spend(user_id: int, since: datetime, *, usd: bool) -> Decimal:
    """What the user spent from the hour ``since`` on, in USD or tokens, from the roll-ups."""
    h = names(UsageHourly)
    if usd:
        total = f"SUM({h.cost_usd})"
    else:
        tokens = (
            h.input_tokens,
            h.output_tokens,
            h.cache_creation_input_tokens,
            h.cache_read_input_tokens,
        )
        total = f"SUM({' + '.join(tokens)})"
    row = fetchone(
        f"SELECT {total} FROM {h.table} WHERE {h.user_id} = %s AND {h.hour} >= %s",
        [bind(UsageHourly, "user_id", user_id), bind(UsageHourly, "hour", since)],
    )
    value = row[0] if row is not None else None
    if value is None:
        return Decimal(0)
    if not usd:
        return Decimal(int(value))
    # As the ORM reads Sum("cost_usd"): on SQLite, a REAL rounded to its 15 significant digits.
    cost = UsageHourly._meta.get_field("cost_usd")
    converters = _converters("hourly cost sum", lambda: [Sum(cost.name, output_field=cost)])
    (spent,) = _convert([value], converters)
    assert isinstance(spent, Decimal)
    return spent


# --- Calls in flight and request rates -----------------------------------------------------------


def in_flight(user_id: int, api_key_id: int | None, now: datetime) -> tuple[int, int]:
    """The user's unexpired reservations: all of them, and those of the API key."""
    r = names(Reservation)
    row = fetchone(
        f"SELECT COUNT(*), COUNT(CASE WHEN {r.api_key_id} = %s THEN 1 END) FROM {r.table} "
        f"WHERE {r.user_id} = %s AND {r.expires_at} > %s",
        [
            bind(Reservation, "api_key_id", api_key_id),
            bind(Reservation, "user_id", user_id),
            bind(Reservation, "expires_at", now),
        ],
    )
    assert row is not None  # an aggregate always has its row
    return int(row[0]), int(row[1])


def rate_bump(scope: str, minute: datetime, tokens: int) -> tuple[int, int]:
    """Count a request (and ``tokens``) in the scope's minute: one statement, that holds the
    counter's row until the transaction ends. Returns the minute's totals including it."""
    c = names(RateCounter)
    row = fetchone(
        f"INSERT INTO {c.table} ({c.scope}, {c.minute}, {c.requests}, {c.tokens}) "
        "VALUES (%s, %s, 1, %s) "
        f"ON CONFLICT ({_unique(RateCounter, 'rate_counter_scope_minute')}) DO UPDATE SET "
        f"{c.requests} = {c.table}.{c.requests} + 1, "
        f"{c.tokens} = {c.table}.{c.tokens} + excluded.{c.tokens} "
        f"RETURNING {c.requests}, {c.tokens}",
        [
            bind(RateCounter, "scope", scope),
            bind(RateCounter, "minute", minute),
            bind(RateCounter, "tokens", tokens),
        ],
    )
    assert row is not None  # an upsert returns its row
    return int(row[0]), int(row[1])


def rate_requests(scopes: list[str], minute: datetime) -> dict[str, int]:
    """The requests counted so far in each scope's minute (none: absent)."""
    c = names(RateCounter)
    marks = _marks(len(scopes))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {c.scope}, {c.requests} FROM {c.table} "
            f"WHERE {c.scope} IN ({marks}) AND {c.minute} = %s",
            [
                *(bind(RateCounter, "scope", scope) for scope in scopes),
                bind(RateCounter, "minute", minute),
            ],
        )
        return {scope: int(requests) for scope, requests in cursor.fetchall()}


def rate_tokens_add(scopes: list[str], minute: datetime, tokens: int) -> None:
    """Add ``tokens`` (negative: take them back) to each scope's count in ``minute``."""
    c = names(RateCounter)
    marks = _marks(len(scopes))
    _execute(
        f"UPDATE {c.table} SET {c.tokens} = {c.tokens} + %s "
        f"WHERE {c.scope} IN ({marks}) AND {c.minute} = %s",
        [
            bind(RateCounter, "tokens", tokens),
            *(bind(RateCounter, "scope", scope) for scope in scopes),
            bind(RateCounter, "minute", minute),
        ],
    )


# --- Reservations --------------------------------------------------------------------------------

_RESERVATION_TAKEN = fields(
    Reservation, ("id", "user_id", "api_key_id", "amounts", "tokens", "minute")
)


def reservation_insert(
    *,
    user_id: int,
    api_key_id: int | None,
    amounts: dict[str, str],
    tokens: int,
    minute: datetime,
    created_at: datetime,
    expires_at: datetime,
    reservation_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Write a call's reservation (under ``reservation_id``, or a new id); returns its id."""
    reservation_id = reservation_id or uuid.uuid4()
    values = {
        "id": reservation_id,
        "user_id": user_id,
        "api_key_id": api_key_id,
        "amounts": amounts,
        "tokens": tokens,
        "minute": minute,
        "created_at": created_at,
        "expires_at": expires_at,
    }
    r = names(Reservation)
    _execute(
        f"INSERT INTO {r.table} ({columns(Reservation, list(values))}) "
        f"VALUES ({_marks(len(values))})",
        _binds(Reservation, values),
    )
    return reservation_id


def reservation_take(reservation_id: uuid.UUID) -> Reservation | None:
    """Delete the reservation and return it (what it held, and where its tokens were counted);
    None when it is gone already."""
    r = names(Reservation)
    row = fetchone(
        f"DELETE FROM {r.table} WHERE {r.id} = %s "
        f"RETURNING {columns(Reservation, _RESERVATION_TAKEN)}",
        [bind(Reservation, "id", reservation_id)],
    )
    return load(Reservation, _RESERVATION_TAKEN, row) if row is not None else None


# --- The ledger ----------------------------------------------------------------------------------

_HOURLY_AMOUNTS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_usd",
)


def usage_insert(values: dict[str, Any]) -> UsageRecord:
    """Write one ledger row of ``values`` (every field but the id); returns it as saved, as
    ``UsageRecord.objects.create(**values)`` would."""
    u = names(UsageRecord)
    row = fetchone(
        f"INSERT INTO {u.table} ({columns(UsageRecord, list(values))}) "
        f"VALUES ({_marks(len(values))}) RETURNING {u.id}",
        _binds(UsageRecord, values),
    )
    assert row is not None  # an insert returns its row
    saved = {"id": row[0], **values}
    attnames = fields(UsageRecord, saved)
    return UsageRecord.from_db(connection.alias, attnames, [saved[name] for name in attnames])


def hourly_add(*, key: dict[str, object], amounts: dict[str, object]) -> None:
    """Add ``amounts`` to the roll-up row of ``key`` (user, hour, agent, model), the first of
    its hour included: one upsert on the roll-up's unique key."""
    _rollup_add(UsageHourly, "usage_hourly_key", key, amounts)


def daily_add(*, key: dict[str, object], amounts: dict[str, object]) -> None:
    """Add ``amounts`` to the daily roll-up row of ``key`` (user, UTC day, agent, model), as
    ``hourly_add`` does to the hour's."""
    _rollup_add(UsageDaily, "usage_daily_key", key, amounts)


def _rollup_add(
    model: type[Model], constraint: str, key: dict[str, object], amounts: dict[str, object]
) -> None:
    h = names(model)
    values = {**key, **{name: amounts[name] for name in _HOURLY_AMOUNTS}}
    increments = ", ".join(
        f"{getattr(h, name)} = {h.table}.{getattr(h, name)} + excluded.{getattr(h, name)}"
        for name in _HOURLY_AMOUNTS
    )
    _execute(
        f"INSERT INTO {h.table} ({columns(model, list(values))}) "
        f"VALUES ({_marks(len(values))}) "
        f"ON CONFLICT ({_unique(model, constraint)}) DO UPDATE SET {increments}",
        _binds(model, values),
    )


# --- Refusals ------------------------------------------------------------------------------------


def refusal_count(*, user_id: int, limit: str, scope: str, minute: datetime) -> None:
    """Count one refusal of the user over ``limit`` in ``minute``: one upsert."""
    r = names(Refusal)
    values = {"user_id": user_id, "limit": limit, "scope": scope, "minute": minute, "count": 1}
    _execute(
        f"INSERT INTO {r.table} ({columns(Refusal, list(values))}) "
        f"VALUES ({_marks(len(values))}) "
        f"ON CONFLICT ({_unique(Refusal, 'refusal_key')}) "
        f"DO UPDATE SET {r.count} = {r.table}.{r.count} + 1",
        _binds(Refusal, values),
    )
