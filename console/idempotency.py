"""``Idempotency-Key`` on creating requests: a retry gets the first answer, not a second effect.

The first request with a key claims it (a unique row per user and key) and, once answered,
stores its status and body there. A retry with the same key and the same request gets that
stored answer back; the same key on a different request, or while the first still runs, is a
409. An answer of 5xx is not kept, so the retry does the work. Keys are forgotten after
``IDEMPOTENCY_KEY_HOURS``.

Views that create wear it as ``idempotent`` (DRF actions), ``idempotent_json`` (async views)
or ``idempotent_followed`` (streams).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from console.models import IdempotentRequest
from plumbing.database import database_sync_to_async
from plumbing.errors import BadRequest, ConsoleError

__all__ = [
    "HEADER",
    "IdempotencyConflict",
    "Replay",
    "idempotency_begin",
    "idempotency_finish",
    "idempotent",
    "idempotent_followed",
    "idempotent_json",
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


# --- The views' side ----------------------------------------------------------------------------


HEADER = "Idempotency-Key"


def _replayed(replay: Replay) -> HttpResponse:
    response = HttpResponse(
        replay.body, status=replay.status_code, content_type=replay.content_type
    )
    response["Idempotent-Replayed"] = "true"
    return response


def idempotent(action: Callable[..., Response]) -> Callable[..., HttpResponse]:
    """Wrap a DRF action that creates something: a retry with the same key gets the first
    answer. A request that raised (a refusal, an error) leaves the key free."""

    @functools.wraps(action)
    def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        key = request.headers.get(HEADER)
        if key is None:
            return action(view, request, *args, **kwargs)
        claim, replay = idempotency_begin(
            user_id=request.user.pk,
            key=key,
            method=request.method or "POST",
            path=request.path,
            body=request._request.body,  # read before DRF parses it; Django keeps a copy
        )
        if replay is not None:
            return _replayed(replay)
        assert claim is not None
        try:
            response = action(view, request, *args, **kwargs)
        except BaseException:
            idempotent_requests_forget(claim_id=claim)
            raise
        idempotency_finish(
            claim_id=claim,
            status_code=response.status_code,
            content_type="application/json",
            body=JSONRenderer().render(response.data),
        )
        return response

    return wrapper


async def idempotent_json(
    request: HttpRequest, user_id: int, run: Callable[[], Awaitable[dict[str, Any]]]
) -> HttpResponse:
    """Answer an async view's JSON result, keeping it for retries that send the same
    ``Idempotency-Key``; without the header, just answer it."""
    return await _kept(request, user_id, run, _json, kept_as="application/json")


async def idempotent_followed(
    request: HttpRequest,
    user_id: int,
    start: Callable[[], Awaitable[dict[str, Any]]],
    follow: Callable[[dict[str, Any]], Awaitable[HttpResponse]],
) -> HttpResponse:
    """For work whose answer is a stream: ``start`` begins it and returns a JSON reference to
    it, kept for the ``Idempotency-Key``; ``follow`` answers from a reference. A retry with
    the key follows the first request's work (from its start, then live) instead of doing it
    again."""
    return await _kept(request, user_id, start, follow, kept_as=_REFERENCE)


# What is kept for a stream: where to follow its work, not its bytes.
_REFERENCE = "application/vnd.agent-console.reference+json"


async def _json(result: dict[str, Any]) -> HttpResponse:
    return JsonResponse(result)


async def _kept(
    request: HttpRequest,
    user_id: int,
    work: Callable[[], Awaitable[dict[str, Any]]],
    answer: Callable[[dict[str, Any]], Awaitable[HttpResponse]],
    *,
    kept_as: str,
) -> HttpResponse:
    """Do ``work`` once per ``Idempotency-Key`` and keep its JSON result; ``answer`` makes the
    response from a result, the first request's or the one kept for a retry."""
    key = request.headers.get(HEADER)
    if key is None:
        return await answer(await work())
    claim, replay = await database_sync_to_async(idempotency_begin)(
        user_id=user_id,
        key=key,
        method=request.method or "POST",
        path=request.path,
        body=request.body,
    )
    if replay is not None:
        response = await answer(json.loads(replay.body))
        response["Idempotent-Replayed"] = "true"
        return response
    assert claim is not None
    try:
        result = await work()
        body = json.dumps(result, cls=DjangoJSONEncoder).encode()
    except BaseException:
        await database_sync_to_async(idempotent_requests_forget)(claim_id=claim)
        raise
    await database_sync_to_async(idempotency_finish)(
        claim_id=claim, status_code=200, content_type=kept_as, body=body
    )
    return await answer(result)
