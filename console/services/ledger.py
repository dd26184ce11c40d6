"""The usage ledger: prices, and every priced call written with its hourly and daily roll-ups.

The ledger row and its roll-ups are written on every gateway call, as SQL (``ledger_sql.py``):
three statements, each roll-up one upsert, where the ORM needed an update, perhaps an insert,
and ~0.6 ms of compiling them. A settlement the database keeps refusing waits in a spool file on
this machine's disk (``ledger_spool``) until it can be written."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from console.models import ModelPrice, UsageRecord
from console.services import ledger_sql
from plumbing.errors import BadRequest

__all__ = [
    "MAX_COUNT",
    "ModelNotPriced",
    "TokenUsage",
    "cost_of",
    "ledger_spool",
    "ledger_spooled",
    "price_cache_clear",
    "price_for",
    "priced_models",
    "usage_record",
]

log = logging.getLogger("console.gateway")

_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1_000)
# The most any one count of a call is taken to be: far above any context window, and within
# every ledger column (a count past it is what an upstream that misreports sends).
MAX_COUNT = 1_000_000_000


class ModelNotPriced(BadRequest):
    """No price is in force for the model: calls to it are refused until an operator prices it."""

    code = "model_not_priced"


def _count(value: int) -> int:
    return min(max(0, value), MAX_COUNT)


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """What a call used, as Anthropic reports it in a response's ``usage``: tokens by kind (the
    cache writes, and the part of them written to the 1-hour cache) and web searches. Each
    count is held within 0 and ``MAX_COUNT``, and the 1-hour part within the cache writes."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    web_search_requests: int = 0

    def __post_init__(self) -> None:
        for name in self.__slots__:  # type: ignore[attr-defined]
            object.__setattr__(self, name, _count(getattr(self, name)))
        object.__setattr__(
            self,
            "cache_creation_1h_input_tokens",
            min(self.cache_creation_1h_input_tokens, self.cache_creation_input_tokens),
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_1h_input_tokens": self.cache_creation_1h_input_tokens,
            "web_search_requests": self.web_search_requests,
        }

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


_prices: dict[tuple[str, date], tuple[float, ModelPrice | None]] = {}
_priced: dict[date, tuple[float, list[str]]] = {}


def price_cache_clear() -> None:
    """Forget the prices this process has read (an operator changed one)."""
    _prices.clear()
    _priced.clear()


def priced_models(*, at: datetime) -> list[str]:
    """The models with a price in force at ``at``, by name (kept as long as a price is)."""
    now = time.monotonic()
    cached = _priced.get(at.date())
    if cached is not None and cached[0] > now:
        return cached[1]
    names = sorted(
        ModelPrice.objects.filter(effective_from__lte=at.date())
        .values_list("model", flat=True)
        .distinct()
    )
    _priced[at.date()] = (now + settings.PRICE_CACHE_SECONDS, names)
    return names


def price_for(*, model: str, at: datetime) -> ModelPrice | None:
    """The price of ``model`` in force at ``at``; a dated snapshot name falls back to its family.

    Every call through the gateway needs it twice, so each process keeps what it read for
    ``PRICE_CACHE_SECONDS``: a price changed in the admin applies at once in that process and
    within that time everywhere else."""
    key = (model, at.date())
    now = time.monotonic()
    cached = _prices.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    price = _price_from_table(model, at)
    _prices[key] = (now + settings.PRICE_CACHE_SECONDS, price)
    return price


def _price_from_table(model: str, at: datetime) -> ModelPrice | None:
    candidates = [model]
    base, _, suffix = model.rpartition("-")
    if base and suffix.isdigit() and len(suffix) == 8:
        candidates.append(base)
    for name in candidates:
        price = (
            ModelPrice.objects.filter(model=name, effective_from__lte=at.date())
            .order_by("-effective_from")
            .first()
        )
        if price is not None:
            return price
    return None


def cost_of(*, usage: TokenUsage, price: ModelPrice) -> Decimal:
    """What ``usage`` costs at ``price``: tokens by kind, and web searches by the thousand."""
    five_minutes = usage.cache_creation_input_tokens - usage.cache_creation_1h_input_tokens
    tokens = (
        usage.input_tokens * price.input_per_mtok
        + usage.output_tokens * price.output_per_mtok
        + five_minutes * price.cache_write_per_mtok
        + usage.cache_creation_1h_input_tokens * price.cache_write_1h_per_mtok
        + usage.cache_read_input_tokens * price.cache_read_per_mtok
    )
    fees = usage.web_search_requests * price.web_search_per_1k / _THOUSAND
    return (tokens / _MILLION + fees).quantize(Decimal("0.00000001"))


def usage_record(
    *,
    user_id: int,
    model: str,
    usage: TokenUsage,
    price: ModelPrice | None = None,
    agent_id: object | None = None,
    session_id: object | None = None,
    request_id: str = "",
    at: datetime | None = None,
) -> UsageRecord:
    """Price one call (at ``price``, else at the model's) and write it to the ledger and its
    roll-ups, in one transaction. Raises ``ModelNotPriced`` when the model has no price."""
    now = at or timezone.now()
    price = price or price_for(model=model, at=now)
    if price is None:
        raise ModelNotPriced(f"the model {model[:100]!r} has no price")
    cost = cost_of(usage=usage, price=price)
    with transaction.atomic(savepoint=False):
        record = ledger_sql.usage_insert(
            {
                "user_id": user_id,
                "agent_id": agent_id,
                "session_id": session_id,
                "model": model,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
                "cache_creation_1h_input_tokens": usage.cache_creation_1h_input_tokens,
                "web_search_requests": usage.web_search_requests,
                "cost_usd": cost,
                "request_id": request_id[:100],
                "created_at": now,
            }
        )
        _roll_up(record)
    return record


def _roll_up(record: UsageRecord) -> None:
    """Add one ledger row to its hour's and its UTC day's roll-ups: an increment, or the first
    row of that hour or day (one upsert each, so two processes writing the first row at once
    both count)."""
    hour = record.created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    agent_id = str(record.agent_id or "")
    amounts = {
        "requests": 1,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cache_creation_input_tokens": record.cache_creation_input_tokens,
        "cache_read_input_tokens": record.cache_read_input_tokens,
        "cost_usd": record.cost_usd,
    }
    common = {"user_id": record.user_id, "agent_id": agent_id, "model": record.model}
    ledger_sql.hourly_add(key={**common, "hour": hour}, amounts=amounts)
    ledger_sql.daily_add(key={**common, "day": hour.date()}, amounts=amounts)


# --- The spool -----------------------------------------------------------------------------------

SPOOL_NAME = "gateway-unsettled.jsonl"


def _spool_path() -> str:
    return os.path.join(settings.VAR_DIR, SPOOL_NAME)


@contextlib.contextmanager
def _spool_locked() -> Iterator[int]:
    """The spool file, open and locked against this machine's other processes."""
    descriptor = os.open(_spool_path(), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield descriptor
    finally:
        os.close(descriptor)  # and with it the lock


def ledger_spool(entry: dict[str, object]) -> None:
    """Keep a settlement the database refused on this machine's disk, one JSON line, until
    ``ledger_spooled`` hands it back to be settled again."""
    line = json.dumps(entry, default=str) + "\n"
    with _spool_locked() as descriptor:
        os.write(descriptor, line.encode())
        os.fsync(descriptor)


def ledger_spooled(settle: Callable[[dict[str, object]], None]) -> int:
    """Settle each spooled settlement with ``settle``, keeping those it fails on; returns how
    many it settled. Cheap when there are none (one ``stat``)."""
    if not os.path.exists(_spool_path()) or os.path.getsize(_spool_path()) == 0:
        return 0
    settled = 0
    with _spool_locked() as descriptor:
        with open(_spool_path(), encoding="utf-8") as spool:
            entries = [json.loads(line) for line in spool if line.strip()]
        kept = []
        for entry in entries:
            try:
                settle(entry)
            except Exception:  # kept on disk and logged: tried again later
                log.exception("a spooled settlement failed again; it stays spooled")
                kept.append(entry)
            else:
                settled += 1
        os.ftruncate(descriptor, 0)
        for entry in kept:
            os.write(descriptor, (json.dumps(entry, default=str) + "\n").encode())
        os.fsync(descriptor)
    return settled
