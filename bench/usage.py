"""Usage summaries and the usage pages over a ledger of a million calls: how long
``console.selectors.usage_summary`` takes for one user's month and for everyone's month, and how
long each usage page takes to answer an operator.

Loads 1,000,000 ledger rows (200 users with 10 agents each, 4 models, 90 days) into a fresh
database, as a restore would: bulk inserts (``executemany`` on SQLite, ``COPY`` on PostgreSQL)
with the indexes built after, then the hourly roll-up built from the ledger and the daily one
from the hourly, each with one ``INSERT … SELECT … GROUP BY``, not call by call. Calls come in
agent turns of a few calls within minutes (``--uniform``: each call on its own at a random
moment, the roll-ups' worst case, where the hourly one is hardly smaller than the ledger).

Then times summaries of 30-day ranges that start and end mid-hour (so each reads the roll-up
and the ledger at both edges), for a random user, the busiest user, or everyone, and checks
them against the ledger. Then requests each usage page through Django's test client, signed in
as an operator who sees everyone: ``/usage/`` in each grouping over the last 30 days and the
last 24 hours (both ranges unaligned, so every piece is read: days, hours and the ledger's
edges), and ``/usage/quotas/``.

    python bench/usage.py [--quick] [--runs N] [--page-runs N] [--uniform]
                          [--database-url postgres://postgres@127.0.0.1:5432/agent_console_bench]

By default the database is SQLite in a temporary folder; with ``--database-url`` it is that
PostgreSQL database, created (dropped first if it exists) and dropped at the end. ``--quick``
loads 200,000 rows instead of a million and times fewer runs (its figures say so).

Ends with one line per target: ``TARGET <name> <value> <unit> <op> <target> PASS|FAIL``; the
line ``TARGET usage_summary_p95`` is the worst of the per-case p95s, ``TARGET usage_page_p95``
the worst of the pages'. Targets are on wall time;
each case also reports this process's CPU time, which on SQLite (run in process) is the query's
own cost whatever else the machine runs, and on PostgreSQL leaves out the server's work.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from harness import (
    close_database,
    console_environment,
    database_url,
    migrate,
    percentile,
    report,
    scratch_database,
)

if TYPE_CHECKING:
    from django.db.models import Model


ROWS = 1_000_000
USERS = 200
AGENTS_PER_USER = 10
DAYS = 90
MODELS = ("claude-opus-5-5", "claude-sonnet-5-5", "claude-sonnet-4-5", "claude-haiku-5-5")
TARGET_MS = 100.0
PAGE_TARGET_MS = 200.0
_CHUNK = 100_000
# SQLite sums USD amounts in floating point (PostgreSQL exactly): allow for its rounding.
_COST_TOLERANCE = Decimal("1e-9")


# --- The data ------------------------------------------------------------------------------------


def _price_units(model: str) -> tuple[int, int, int, int]:
    """The model's prices in 1e-9 USD per token (every seeded price is a whole number of them),
    so costs are exact integers, rounded as ``cost_of`` rounds them."""
    from console.services import price_for

    price = price_for(model=model, at=datetime.now(UTC))
    assert price is not None, f"no price for {model}"
    rates = (
        price.input_per_mtok,
        price.output_per_mtok,
        price.cache_write_per_mtok,
        price.cache_read_per_mtok,
    )
    units = tuple(int(rate * 1000) for rate in rates)
    assert all(unit == rate * 1000 for unit, rate in zip(units, rates, strict=True))
    return units  # type: ignore[return-value]


def _owners_and_agents(rng: random.Random) -> tuple[list[int], list[list[tuple[str, int]]]]:
    """200 users and 10 agents each; each agent has its own model, as agents do."""
    from agents.models import Agent
    from console.models import User

    users = User.objects.bulk_create(
        User(username=f"bench-{n:03d}", password="!") for n in range(USERS)
    )
    agents = Agent.objects.bulk_create(
        Agent(owner=user, model=rng.choice(MODELS), status="stopped")
        for user in users
        for _ in range(AGENTS_PER_USER)
    )
    by_user: dict[int, list[tuple[str, int]]] = {user.pk: [] for user in users}
    for agent in agents:
        by_user[agent.owner_id].append((agent.pk.hex, MODELS.index(agent.model)))
    user_ids = [user.pk for user in users]
    return user_ids, [by_user[pk] for pk in user_ids]


def _ledger_rows(  # type: ignore[no-untyped-def]
    rng: random.Random,
    end: datetime,
    user_ids: list[int],
    agents: list[list[tuple[str, int]]],
    prices: list[tuple[int, int, int, int]],
    *,
    uniform: bool,
):
    """``ROWS`` ledger rows in chunks, about in time order: (user_id, agent hex or None, model,
    the four token counts, cost, created_at as ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC).

    Users are mildly skewed (the busiest makes ~7% of the calls); 10% of the calls come without
    an agent (API keys); an agent uses its own model 80% of the time. By default calls come as
    agents make them, in turns of 1 to 15 calls (8 on average) within ten minutes, with one
    model. ``uniform``: every call on its own at a random moment, the roll-up's worst case,
    where hardly two calls share a roll-up row.
    """
    span_us = DAYS * 86_400 * 1_000_000
    start = end - timedelta(microseconds=span_us)
    randrange, rand = rng.randrange, rng.random
    sizes: list[int] = []
    planned = 0
    while planned < ROWS:
        sizes.append(min(1 if uniform else randrange(1, 16), ROWS - planned))
        planned += sizes[-1]
    turns = sorted(int(rand() * span_us) for _ in sizes)
    weights = [1 / (rank + 1) ** 0.7 for rank in range(USERS)]
    callers = rng.choices(range(USERS), weights=weights, k=len(sizes))
    prefixes: dict[int, str] = {}
    chunk: list[tuple[object, ...]] = []
    for turn, size, who in zip(turns, sizes, callers, strict=True):
        if rand() < 0.9:
            agent, model = agents[who][randrange(AGENTS_PER_USER)]
            if rand() < 0.2:
                model = randrange(4)
        else:
            agent, model = None, randrange(4)
        pi, po, pw, pr = prices[model]
        offsets = (
            [turn] if size == 1 else sorted(turn + int(rand() * 600_000_000) for _ in range(size))
        )
        for offset in offsets:
            # int(rand() * n) rather than randrange(n): a third of the time, for a million rows
            tokens_in, tokens_out = 50 + int(rand() * 3950), 10 + int(rand() * 1490)
            written = 100 + int(rand() * 7900) if rand() < 0.1 else 0
            read = 1000 + int(rand() * 29000) if rand() < 0.5 else 0
            nanos = tokens_in * pi + tokens_out * po + written * pw + read * pr
            units, rest = divmod(nanos, 10)  # to 1e-8 USD, half to even as Decimal rounds
            units += rest > 5 or (rest == 5 and units % 2)
            hour, within = divmod(min(offset, span_us - 1), 3_600_000_000)
            prefix = prefixes.get(hour)
            if prefix is None:
                prefix = prefixes[hour] = f"{start + timedelta(hours=hour):%Y-%m-%d %H}:"
            seconds, micros = divmod(within, 1_000_000)
            chunk.append(
                (
                    user_ids[who],
                    agent,
                    MODELS[model],
                    tokens_in,
                    tokens_out,
                    written,
                    read,
                    f"{units // 100_000_000}.{units % 100_000_000:08d}",
                    f"{prefix}{seconds // 60:02d}:{seconds % 60:02d}.{micros:06d}",
                )
            )
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_LEDGER_COLUMNS = (
    "user_id",
    "agent_id",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_usd",
    "created_at",
)


def _load_ledger(chunks) -> None:  # type: ignore[no-untyped-def]
    from django.db import connection, transaction

    from console.models import UsageRecord

    table = UsageRecord._meta.db_table
    columns = ", ".join((*_LEDGER_COLUMNS, "request_id", "session_id"))
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for chunk in chunks:
                    buffer = io.StringIO()
                    for row in chunk:
                        agent = row[1] or "\\N"
                        buffer.write(
                            f"{row[0]}\t{agent}\t{row[2]}\t{row[3]}\t{row[4]}\t{row[5]}\t{row[6]}"
                            f"\t{row[7]}\t{row[8]}+00\t\t\\N\n"
                        )
                    copy.write(buffer.getvalue())
        else:
            marks = ", ".join(["%s"] * len(_LEDGER_COLUMNS))
            statement = f"INSERT INTO {table} ({columns}) VALUES ({marks}, '', NULL)"
            for chunk in chunks:
                cursor.executemany(statement, chunk)


def _build_rollup() -> int:
    """The hourly roll-up of the whole ledger, in one statement."""
    from django.db import connection, transaction

    from console.models import UsageHourly, UsageRecord

    if connection.vendor == "postgresql":
        hour = "date_trunc('hour', created_at)"
        agent = "COALESCE(agent::text, '')"
    else:  # Django stores times as text and UUIDs as 32 hex digits on SQLite
        hour = "substr(created_at, 1, 13) || ':00:00'"
        agent = (
            "COALESCE(substr(agent, 1, 8) || '-' || substr(agent, 9, 4) || '-' || "
            "substr(agent, 13, 4) || '-' || substr(agent, 17, 4) || '-' || substr(agent, 21), '')"
        )
    kinds = _LEDGER_COLUMNS[3:8]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {UsageHourly._meta.db_table} (hour, user_id, agent_id, model, requests, "
            f"{', '.join(kinds)}) SELECT hour, user_id, {agent}, model, requests, "
            f"{', '.join(kinds)} FROM (SELECT {hour} AS hour, user_id, agent_id AS agent, model, "
            f"COUNT(*) AS requests, {', '.join(f'SUM({kind}) AS {kind}' for kind in kinds)} "
            f"FROM {UsageRecord._meta.db_table} GROUP BY 1, 2, 3, 4) AS hours"
        )
        return cursor.rowcount


def _build_daily() -> int:
    """The daily roll-up, from the hourly one, in one statement."""
    from django.db import connection, transaction

    from console.models import UsageDaily, UsageHourly

    day = "hour::date" if connection.vendor == "postgresql" else "substr(hour, 1, 10)"
    amounts = ("requests", *_LEDGER_COLUMNS[3:8])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {UsageDaily._meta.db_table} (day, user_id, agent_id, model, "
            f"{', '.join(amounts)}) SELECT {day}, user_id, agent_id, model, "
            f"{', '.join(f'SUM({name})' for name in amounts)} "
            f"FROM {UsageHourly._meta.db_table} GROUP BY 1, 2, 3, 4"
        )
        return cursor.rowcount


def _analyze() -> None:
    """PostgreSQL: fresh statistics for the planner, as autovacuum gathers them after a load.
    SQLite keeps none unless asked (Django never asks), and none are gathered here: with them
    it reads everyone's month by skipping through the roll-up's unique key user by user, which
    takes about 1.6 times the CPU of reading along the hour index, as it does without them."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


@contextlib.contextmanager
def _indexes_built_after(model: type[Model]) -> Iterator[None]:
    """Drop a table's secondary indexes (and on PostgreSQL its foreign keys) for a bulk load and
    build them again after it, as ``pg_restore`` does: one sort per index instead of a million
    scattered inserts into each. Primary keys and unique constraints stay."""
    from django.db import connection

    table = model._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype = 'f'",
                [table],
            )
            foreign_keys = cursor.fetchall()
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname "
                "NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
                [table, table],
            )
            indexes = cursor.fetchall()
            for name, _ in foreign_keys:
                cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        else:  # SQLite checks foreign keys row by row, cheaply; they stay
            cursor.execute(
                "SELECT name, sql FROM sqlite_master "
                "WHERE type = 'index' AND tbl_name = %s AND sql IS NOT NULL",
                [table],
            )
            foreign_keys, indexes = [], cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
    yield
    with connection.cursor() as cursor:
        for _, definition in indexes:
            cursor.execute(definition)
        for name, definition in foreign_keys:
            cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


def _fast_writes() -> None:
    """SQLite: a throwaway file need not survive a power cut, and sorts (for the indexes and
    the roll-up) run in memory, on every core."""
    from django.db import connection

    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            for pragma in (
                "synchronous=OFF",
                "cache_size=-400000",
                "temp_store=MEMORY",
                "threads=4",
            ):
                cursor.execute(f"PRAGMA {pragma}")


def generate(rng: random.Random, end: datetime, *, uniform: bool) -> None:
    from console.models import UsageDaily, UsageHourly, UsageRecord

    started = time.perf_counter()
    _fast_writes()
    user_ids, agents = _owners_and_agents(rng)
    prices = [_price_units(model) for model in MODELS]
    with _indexes_built_after(UsageRecord):
        _load_ledger(_ledger_rows(rng, end, user_ids, agents, prices, uniform=uniform))
    loaded = time.perf_counter()
    with _indexes_built_after(UsageHourly):
        rollup_rows = _build_rollup()
    with _indexes_built_after(UsageDaily):
        daily_rows = _build_daily()
    done = time.perf_counter()
    _analyze()
    print(
        f"ledger: {ROWS:,} rows in {loaded - started:.1f} s "
        f"({ROWS / (loaded - started):,.0f} rows/s, indexes included); roll-ups: "
        f"{rollup_rows:,} hourly rows ({ROWS / rollup_rows:.1f} calls per row), {daily_rows:,} "
        f"daily rows ({ROWS / daily_rows:.1f} calls per row) in {done - loaded:.1f} s;"
        f" statistics in {time.perf_counter() - done:.1f} s",
        flush=True,
    )


# --- The measurements ----------------------------------------------------------------------------


def _month(rng: random.Random, end: datetime) -> tuple[datetime, datetime]:
    """A 30-day range ending at a random moment of the last 60 days (never on the hour)."""
    until = end - timedelta(
        seconds=rng.randrange(1, 60 * 86_400), microseconds=rng.randrange(1, 10**6)
    )
    return until - timedelta(days=30), until


def check_exact(rng: random.Random, end: datetime) -> None:
    """Summaries of unaligned ranges equal the ledger's own sums."""
    from django.db.models import Count, Sum

    from console.models import UsageRecord, User
    from console.selectors import usage_summary, usage_totals

    user_id = User.objects.filter(username="bench-000").values_list("pk", flat=True).get()
    start, until = _month(rng, end)
    ledger = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=until)
    sums = {"requests": Count("id"), "output_tokens": Sum("output_tokens"), "cost": Sum("cost_usd")}
    expected = {
        row["model"]: row
        for row in ledger.filter(user_id=user_id).order_by().values("model").annotate(**sums)
    }
    for row in usage_summary(user_ids=[user_id], start=start, end=until, group_by="model"):
        want = expected.pop(row["model"])
        assert (row["requests"], row["output_tokens"]) == (want["requests"], want["output_tokens"])
        assert abs(row["cost_usd"] - want["cost"]) <= _COST_TOLERANCE * max(1, want["cost"])
    assert not expected, f"models missing from the summary: {list(expected)}"
    totals = usage_totals(user_ids=None, start=start, end=until)
    want = ledger.aggregate(**sums)
    assert (totals["requests"], totals["output_tokens"]) == (
        want["requests"],
        want["output_tokens"],
    )
    assert abs(totals["cost_usd"] - want["cost"]) <= _COST_TOLERANCE * want["cost"]
    print("exactness: summaries of unaligned ranges match the ledger")


def measure(rng: random.Random, end: datetime, runs: int) -> list[str]:
    from console.models import User
    from console.selectors import usage_summary

    user_ids = list(
        User.objects.filter(username__startswith="bench-")
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    busiest = user_ids[0]  # the users' weights fall with their rank
    cases = [
        ("one_user_by_day", "day", "random"),
        ("one_user_by_model", "model", "random"),
        ("one_user_by_agent", "agent", "random"),
        ("busiest_user_by_agent", "agent", "busiest"),
        ("all_users_by_user", "user", "all"),
    ]
    lines, worst = [], 0.0
    for name, group_by, whom in cases:
        timings, cpu, groups = [], [], 0
        for _ in range(runs):
            who = {"random": [rng.choice(user_ids)], "busiest": [busiest], "all": None}[whom]
            start, until = _month(rng, end)
            began, began_cpu = time.perf_counter(), time.process_time()
            rows = usage_summary(user_ids=who, start=start, end=until, group_by=group_by)
            timings.append((time.perf_counter() - began) * 1000)
            cpu.append((time.process_time() - began_cpu) * 1000)
            groups += len(rows)
        p95 = percentile(timings, 95)
        worst = max(worst, p95)
        print(
            f"{name}: p50 {statistics.median(timings):.1f} ms, p95 {p95:.1f} ms, "
            f"max {max(timings):.1f} ms over {runs} runs ({groups / runs:.0f} groups each); "
            f"this process's CPU p50 {statistics.median(cpu):.1f} ms, "
            f"p95 {percentile(cpu, 95):.1f} ms",
            flush=True,
        )
        lines.append(report(f"usage_summary_{name}_p95", p95, "ms", "<=", TARGET_MS))
    lines.append(report("usage_summary_p95", worst, "ms", "<=", TARGET_MS))
    return lines


def measure_pages(runs: int) -> list[str]:
    """Each usage page as an operator sees it (everyone's usage), through the test client."""
    from django.test import Client

    from console.models import User
    from usage.selectors import GROUPINGS

    operator = User.objects.create_user("bench-operator", password="!", is_staff=True)
    client = Client(HTTP_HOST="localhost")
    client.force_login(operator)
    cases = [
        (f"{group_by}_{span}", f"/usage/?range={span}&group_by={group_by}")
        for span in ("30d", "24h")
        for group_by in GROUPINGS
    ]
    cases.append(("quotas", "/usage/quotas/"))
    lines, worst = [], 0.0
    for name, url in cases:
        client.get(url)  # the first request compiles the templates
        timings, cpu, size = [], [], 0
        for _ in range(runs):
            began, began_cpu = time.perf_counter(), time.process_time()
            response = client.get(url)
            timings.append((time.perf_counter() - began) * 1000)
            cpu.append((time.process_time() - began_cpu) * 1000)
            assert response.status_code == 200, (url, response.status_code)
            size = len(response.content)
        p95 = percentile(timings, 95)
        worst = max(worst, p95)
        print(
            f"page {name}: p50 {statistics.median(timings):.1f} ms, p95 {p95:.1f} ms, "
            f"max {max(timings):.1f} ms over {runs} runs ({size / 1024:.0f} KiB); this "
            f"process's CPU p50 {statistics.median(cpu):.1f} ms, p95 {percentile(cpu, 95):.1f} ms",
            flush=True,
        )
        lines.append(report(f"usage_page_{name}_p95", p95, "ms", "<=", PAGE_TARGET_MS))
    lines.append(report("usage_page_p95", worst, "ms", "<=", PAGE_TARGET_MS))
    return lines


def main() -> None:
    global ROWS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--runs", type=int, help="timed runs per case (default 200; quick 30)")
    parser.add_argument(
        "--page-runs", type=int, help="timed requests per page (default 40; quick 8)"
    )
    parser.add_argument(
        "--database-url", type=database_url, help="a PostgreSQL database to create, use and drop"
    )
    parser.add_argument(
        "--uniform",
        action="store_true",
        help="every call on its own at a random moment (the roll-up's worst case), not in turns",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    runs = args.runs or (30 if args.quick else 200)
    page_runs = args.page_runs or (8 if args.quick else 40)
    if args.quick:
        ROWS = 200_000
        print(f"quick: {ROWS:,} ledger rows, not the full run's million", flush=True)
    began = time.perf_counter()
    with (
        scratch_database(args.database_url),
        tempfile.TemporaryDirectory(prefix="bench-usage-") as var_dir,
    ):
        console_environment(Path(var_dir), args.database_url, CELERY_TASK_ALWAYS_EAGER="true")
        migrate()
        from django.db import connection

        print(f"database: {connection.vendor}", flush=True)
        rng = random.Random(args.seed)
        end = datetime.now(UTC)
        generate(rng, end, uniform=args.uniform)
        check_exact(rng, end)
        lines = measure(rng, end, runs)
        lines += measure_pages(page_runs)
        close_database()
    print(f"total: {time.perf_counter() - began:.1f} s")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
