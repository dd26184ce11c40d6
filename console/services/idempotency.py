"""``Idempotency-Key`` on creating requests: a retry gets the first answer, not a second effect.

The first request with a key claims it (a unique row per user and key) and, once answered,
stores its status and body there. A retry with the same key and the same request gets that
stored answer back; the same key on a different request, or while the first still runs, is a
409. An answer of 5xx is not kept, so the retry does the work. Keys are forgotten after
``IDEMPOTENCY_KEY_HOURS``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from console.errors import BadRequest, ConsoleError
from console.models import IdempotentRequest

__all__ = [
    "IdempotencyConflict",
    "Replay",
    "idempotency_begin",
    "idempotency_finish",
    "idempotent_requests_expire",
    "idempotent_requests_forget",
]

MAX_KEY_LENGTH = 255


class IdempotencyConflict(ConsoleError):
    status, code = 409, "idempotency_conflict"


@dataclass(frozen=True, slots=True)
class Replay:
    """The stored answer of the request that first used the key."""

    status_code: int
    content_type: str
    body: bytes


def idempotency_begin(
    *, user_id: int, key: str, method: str, path: str, body: bytes
) -> tuple[int | None, Replay | None]:
    """Claim ``key`` for this request: (the claim's id, None) to go ahead and do the work, or
    (None, the first answer) to send that instead. Raises ``IdempotencyConflict``."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    digest = hashlib.sha256(body).hexdigest()
    fresh_after = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)
    IdempotentRequest.objects.filter(user_id=user_id, key=key, created_at__lt=fresh_after).delete()
    try:
        with transaction.atomic():
            claim = IdempotentRequest.objects.create(
                user_id=user_id, key=key, method=method, path=path, request_hash=digest
            )
        return claim.pk, None
    except IntegrityError:
        first = IdempotentRequest.objects.filter(user_id=user_id, key=key).first()
    if first is None:  # forgotten meanwhile: claim it afresh
        return idempotency_begin(user_id=user_id, key=key, method=method, path=path, body=body)
    if (first.method, first.path, first.request_hash) != (method, path, digest):
        raise IdempotencyConflict(
            "this Idempotency-Key was used for a different request; use a new key",
            details={"idempotency_key": key, "first_request": f"{first.method} {first.path}"},
        )
    if first.status_code is None:
        raise IdempotencyConflict(
            "a request with this Idempotency-Key is still running; retry shortly",
            details={"idempotency_key": key},
            retry_after=1,
        )
    return None, Replay(first.status_code, first.content_type, bytes(first.body))


def idempotency_finish(*, claim_id: int, status_code: int, content_type: str, body: bytes) -> None:
    """Keep the answer for retries; a 5xx (or no answer) frees the key instead."""
    if status_code >= 500:
        IdempotentRequest.objects.filter(pk=claim_id).delete()
        return
    IdempotentRequest.objects.filter(pk=claim_id).update(
        status_code=status_code, content_type=content_type, body=body
    )


def idempotent_requests_forget(*, claim_id: int) -> None:
    IdempotentRequest.objects.filter(pk=claim_id).delete()


def idempotent_requests_expire() -> int:
    """Forget keys older than ``IDEMPOTENCY_KEY_HOURS``; beat runs it every hour."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)
    deleted, _ = IdempotentRequest.objects.filter(created_at__lt=cutoff).delete()
    return deleted
