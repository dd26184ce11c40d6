"""The hot counters in Redis: each scope's requests and tokens per clock minute, and the calls
it has in flight, when ``REDIS_URL`` is set (without it they are ``RateCounter`` and
``Reservation`` rows, counted under the user's row lock; see ``limits.py``).

Each check-and-count is one Lua script, which Redis runs whole before any other command, so two
processes can never both see room for one last request. Keys, all under ``console:limits:``:

* ``rate:<minute>`` (the minute's start, in Unix seconds): a hash of ``r:<scope>`` (requests)
  and ``t:<scope>`` (tokens) for every scope counted in that minute, kept for an hour as the
  database's minutes are;
* ``flight:<scope>``: a sorted set of the scope's calls in flight, each scored by the time its
  lease ends (the reservation's ``expires_at``). A call that settles leaves it; one whose process
  died stops counting when its lease ends, as an expired reservation does, and the set itself
  goes once its last lease has ended.

Redis unreachable, every admission is refused with ``ServiceUnavailable`` (503,
``details.service`` "redis"): no call goes uncounted. A settlement still writes the ledger; what
it would have given back in Redis (the slot, the unused tokens) comes back when the lease ends
and the minute passes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from django.conf import settings

from plumbing.errors import OUTAGES, outage_refusal

__all__ = ["PREFIX", "Counted", "Limits", "RedisCounters", "redis_counters"]

PREFIX = "console:limits:"
# A minute's counts are kept this long, as reservations_release_expired keeps RateCounter rows.
RATE_KEEP_SECONDS = 3600
# Redis is on the path of every API request: an outage is refused quickly, not waited out.
_TIMEOUT_SECONDS = 2.0

log = logging.getLogger("console.limits")

# Check every scope, then count in all of them, or in none.
# KEYS: the minute's hash, then the flight sets (none for an API request).
# ARGV: now (ms), lease end (ms), the call's id, its tokens, the hash's TTL (s), the number of
# scopes, then per scope: its name, requests/min, tokens/min, concurrent calls (-1: no limit)
# and the index of its flight set among KEYS (0: none).
# Returns {"ok", requests after, ...}, or the refusal: {limit, scope's index, used, requests
# before in each scope...}.
_ADMIT = """
local now, lease_end = tonumber(ARGV[1]), tonumber(ARGV[2])
local member, tokens, ttl = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local function arg(i, k) return ARGV[6 + 5 * (i - 1) + k] end
for f = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[f], '-inf', now)
end
local requests, used = {}, {}
for i = 1, n do
  local name = arg(i, 1)
  requests[i] = tonumber(redis.call('HGET', KEYS[1], 'r:' .. name) or '0')
  used[i] = tonumber(redis.call('HGET', KEYS[1], 't:' .. name) or '0')
end
for i = 1, n do
  local limit, flight = tonumber(arg(i, 4)), tonumber(arg(i, 5))
  if limit >= 0 and flight > 0 then
    local running = redis.call('ZCARD', KEYS[flight])
    if running + 1 > limit then
      return {'concurrent_requests', i, running, unpack(requests)}
    end
  end
end
for i = 1, n do
  local rpm, tpm = tonumber(arg(i, 2)), tonumber(arg(i, 3))
  if rpm >= 0 and requests[i] + 1 > rpm then
    return {'requests_per_minute', i, requests[i], unpack(requests)}
  end
  if tokens > 0 and tpm >= 0 and used[i] + tokens > tpm then
    return {'tokens_per_minute', i, used[i], unpack(requests)}
  end
end
local after = {'ok'}
for i = 1, n do
  local name = arg(i, 1)
  after[i + 1] = redis.call('HINCRBY', KEYS[1], 'r:' .. name, 1)
  if tokens > 0 then redis.call('HINCRBY', KEYS[1], 't:' .. name, tokens) end
end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ttl) end
for f = 2, #KEYS do
  redis.call('ZADD', KEYS[f], lease_end, member)
  if redis.call('PTTL', KEYS[f]) < lease_end - now then
    redis.call('PEXPIRE', KEYS[f], lease_end - now)
  end
end
return after
"""

# Give back what a call held: its slot in each flight set, and requests and tokens counted in
# its minute (a minute that has gone, or a scope it never counted in, is left alone).
# KEYS: the minute's hash, then the flight sets. ARGV: the call's id, requests to add, tokens to
# add (negative: take back), then the scopes' names.
_RELEASE = """
local member, requests, tokens = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for f = 2, #KEYS do redis.call('ZREM', KEYS[f], member) end
for i = 4, #ARGV do
  if requests ~= 0 and redis.call('HEXISTS', KEYS[1], 'r:' .. ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'r:' .. ARGV[i], requests)
  end
  if tokens ~= 0 and redis.call('HEXISTS', KEYS[1], 't:' .. ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[1], 't:' .. ARGV[i], tokens)
  end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Limits:
    """One scope's name and limits, as the admission script takes them."""

    scope: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    concurrent_requests: int | None


@dataclass(frozen=True, slots=True)
class Counted:
    """What an admission found: ``refused`` names the limit ("" when admitted), ``index`` the
    scope that refused, ``used`` what that scope had used; ``requests`` each scope's requests in
    the minute, with this one when admitted, without it when refused."""

    refused: str
    index: int
    used: int
    requests: list[int]


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class RedisCounters:
    """The counters in one Redis database. Every method raises ``ServiceUnavailable`` when
    Redis does not answer."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_SECONDS, socket_connect_timeout=_TIMEOUT_SECONDS
        )
        self._admit = self.client.register_script(_ADMIT)
        self._release = self.client.register_script(_RELEASE)

    @staticmethod
    def rate_key(minute: datetime) -> str:
        return f"{PREFIX}rate:{int(minute.timestamp())}"

    @staticmethod
    def flight_key(scope: str) -> str:
        return f"{PREFIX}flight:{scope}"

    def _run(self, script: Any, keys: list[str], args: list[object]) -> Any:
        try:
            return script(keys=keys, args=args)
        except OUTAGES as exc:
            raise outage_refusal(exc) from exc

    def admit(
        self,
        scopes: list[Limits],
        *,
        minute: datetime,
        now: datetime,
        tokens: int = 0,
        flight: tuple[str, datetime, list[str]] | None = None,
    ) -> Counted:
        """Count one request (and ``tokens``) in each scope's ``minute`` if every limit has
        room; with ``flight`` (the call's id, when its lease ends, the scopes it runs in), the
        call also takes a slot in each of those scopes until it is released or its lease ends."""
        member, lease_end, flying = flight if flight is not None else ("", now, [])
        keys = [self.rate_key(minute), *(self.flight_key(scope) for scope in flying)]
        args: list[object] = [_ms(now), _ms(lease_end), member, tokens, RATE_KEEP_SECONDS]
        args.append(len(scopes))
        for limits in scopes:
            slot = flying.index(limits.scope) + 2 if limits.scope in flying else 0
            args += [
                limits.scope,
                _limit(limits.requests_per_minute),
                _limit(limits.tokens_per_minute),
                _limit(limits.concurrent_requests),
                slot,
            ]
        found = self._run(self._admit, keys, args)
        head = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        if head == "ok":
            return Counted("", 0, 0, [int(n) for n in found[1:]])
        return Counted(head, int(found[1]) - 1, int(found[2]), [int(n) for n in found[3:]])

    def release(
        self,
        *,
        member: str,
        minute: datetime,
        scopes: list[str],
        requests: int = 0,
        tokens: int = 0,
    ) -> None:
        """Free the call's slot in each scope and add ``requests`` and ``tokens`` (negative:
        take them back) to the counts of ``minute`` that exist."""
        keys = [self.rate_key(minute), *(self.flight_key(scope) for scope in scopes)]
        self._run(self._release, keys, [member, requests, tokens, *scopes])

    def minute(self, minute: datetime) -> dict[str, tuple[int, int]]:
        """Every scope counted in ``minute``: its requests and tokens."""
        try:
            raw = self.client.hgetall(self.rate_key(minute))
        except OUTAGES as exc:
            raise outage_refusal(exc) from exc
        found: dict[str, list[int]] = {}
        for field, value in raw.items():
            kind, scope = field.decode().split(":", 1)
            found.setdefault(scope, [0, 0])[kind == "t"] = int(value)
        return {scope: (counts[0], counts[1]) for scope, counts in found.items()}

    def requests(self, scopes: list[str], minute: datetime) -> dict[str, int]:
        """The requests counted so far in each scope's minute (none: absent)."""
        try:
            values = self.client.hmget(self.rate_key(minute), [f"r:{s}" for s in scopes])
        except OUTAGES as exc:
            raise outage_refusal(exc) from exc
        return {scope: int(v) for scope, v in zip(scopes, values, strict=True) if v is not None}

    def in_flight(self, scopes: list[str], now: datetime) -> dict[str, int]:
        """The calls in flight in each scope (whose lease has not ended)."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for scope in scopes:
                    pipe.zcount(self.flight_key(scope), f"({_ms(now)}", "+inf")
                counts = pipe.execute()
        except OUTAGES as exc:
            raise outage_refusal(exc) from exc
        return {scope: int(n) for scope, n in zip(scopes, counts, strict=True) if n}


_stores: dict[str, RedisCounters] = {}
_stores_lock = threading.Lock()


def redis_counters() -> RedisCounters | None:
    """The counters in the Redis ``REDIS_URL`` names (one client per process); None without it,
    when the database keeps them."""
    url = settings.REDIS_URL
    if not url:
        return None
    store = _stores.get(url)
    if store is None:
        with _stores_lock:
            store = _stores.setdefault(url, RedisCounters(url))
    return store
