"""``Idempotency-Key`` for views that create: DRF actions (``idempotent``), async views
(``idempotent_json``) and streams (``idempotent_followed``). The rules are in
``console.services.idempotency``."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from console.services import (
    Replay,
    idempotency_begin,
    idempotency_finish,
    idempotent_requests_forget,
)

__all__ = ["HEADER", "idempotent", "idempotent_followed", "idempotent_json"]

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
    claim, replay = await sync_to_async(idempotency_begin)(
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
        await sync_to_async(idempotent_requests_forget)(claim_id=claim)
        raise
    await sync_to_async(idempotency_finish)(
        claim_id=claim, status_code=200, content_type=kept_as, body=body
    )
    return await answer(result)
