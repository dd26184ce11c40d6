"""Domain errors and the one error shape every client sees.

Every refusal anywhere in the console answers ``{"error": {"code", "message", "details"}}``.
Services raise a ``ConsoleError`` subclass; the DRF exception handler, the plain Django views and
the Channels consumer turn it into that shape here and nowhere else.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import kombu.exceptions
import redis.exceptions
from django.core.exceptions import PermissionDenied
from django.db import DataError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from plumbing.metrics import ERROR_CODES, error_count

__all__ = [
    "OUTAGES",
    "WWW_AUTHENTICATE",
    "AgentDraining",
    "AgentNotFound",
    "AgentNotRunning",
    "AgentUnavailable",
    "BadRequest",
    "BudgetExceeded",
    "CapacityExhausted",
    "Conflict",
    "ConsoleError",
    "Forbidden",
    "MalformedBody",
    "MethodNotAllowed",
    "NotAuthenticated",
    "NotFound",
    "PayloadTooLarge",
    "PoolWaking",
    "QuotaExceeded",
    "RateLimited",
    "ServiceUnavailable",
    "UserSuspended",
    "drf_exception_handler",
    "error_body",
    "error_response",
    "methods_allowed",
    "outage_refusal",
    "outages_refused",
    "refusal_body",
]


_View = TypeVar("_View", bound=Callable[..., Any])

# The challenge every 401 carries (RFC 9110 11.6.1), on DRF's routes and the plain views alike.
WWW_AUTHENTICATE = 'Bearer realm="api"'


class ConsoleError(Exception):
    """A refusal with a stable machine-readable code, a sentence for people and an HTTP status."""

    status = 400
    code = "bad_request"
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if retry_after is not None:
            self.retry_after = retry_after
        self.extra_headers: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ERROR_CODES.add(cls.code)  # a known label of agent_errors_total

    def headers(self) -> dict[str, str]:
        """HTTP headers the refusal carries: Retry-After, and any the raiser added."""
        found = dict(self.extra_headers)
        if self.retry_after is not None:
            found["Retry-After"] = str(self.retry_after)
        return found


class BadRequest(ConsoleError):
    status, code = 400, "invalid_request"


class MalformedBody(BadRequest):
    """The body is not JSON the console accepts: invalid, too deep, or out of range."""

    code = "malformed_body"


class NotAuthenticated(ConsoleError):
    status, code = 401, "not_authenticated"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": WWW_AUTHENTICATE} | super().headers()


class Forbidden(ConsoleError):
    status, code = 403, "forbidden"


class UserSuspended(Forbidden):
    code = "user_suspended"


class MethodNotAllowed(ConsoleError):
    """The route does not answer this method; ``allowed`` are those it does (the Allow header)."""

    status, code = 405, "method_not_allowed"

    def __init__(self, allowed: Sequence[str]) -> None:
        super().__init__(f"use {' or '.join(allowed)}", details={"allowed": list(allowed)})
        self.extra_headers["Allow"] = ", ".join(allowed)


class PayloadTooLarge(ConsoleError):
    status, code = 413, "request_too_large"


class NotFound(ConsoleError):
    status, code = 404, "not_found"


class AgentNotFound(NotFound):
    code = "agent_not_found"


class AgentNotRunning(ConsoleError):
    status, code = 409, "agent_not_running"


class AgentDraining(AgentNotRunning):
    """The autoscaler is retiring the agent: its open sessions go on, it takes no new one."""

    code = "agent_draining"


class Conflict(ConsoleError):
    """The request does not fit the current state: a closed session, a turn already stopped."""

    status, code = 409, "conflict"


class QuotaExceeded(ConsoleError):
    status, code = 429, "quota_exceeded"


class RateLimited(QuotaExceeded):
    """A request, token or concurrency rate limit; ``details`` names it, its value, what is
    used and when it resets."""

    code = "rate_limited"


class BudgetExceeded(QuotaExceeded):
    """A budget window would be overspent; ``details`` as for ``RateLimited``."""

    code = "budget_exceeded"


class CapacityExhausted(ConsoleError):
    """No sandbox host has room; more may free up soon."""

    status, code, retry_after = 503, "no_capacity", 30


class PoolWaking(ConsoleError):
    """No agent of the caller's came up within the boot wait: their pool is still waking."""

    status, code, retry_after = 503, "pool_waking", 5


class AgentUnavailable(ConsoleError):
    """The agent's runtime could not be reached or answered with an error."""

    status, code = 502, "agent_unavailable"


class DatabaseBusy(ConsoleError):
    """The database took no more work in time (every pooled connection in use); nothing was
    done."""

    status, code, retry_after = 503, "database_busy", 1


class ServiceUnavailable(ConsoleError):
    """A backing service the request needs (``details.service``: the broker, Redis) is
    unreachable; what the request began was undone."""

    status, code, retry_after = 503, "service_unavailable", 5


# What a backing service that is down raises: kombu wraps a broker's connection errors in
# OperationalError (whatever the transport); redis-py, the channel layer's and the replay log's.
OUTAGES: tuple[type[Exception], ...] = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def outage_refusal(exc: Exception) -> ServiceUnavailable:
    """The 503 for one of ``OUTAGES``, naming the service."""
    service = "broker" if isinstance(exc, kombu.exceptions.OperationalError) else "redis"
    return ServiceUnavailable(
        f"the {service} is unreachable: try again shortly", details={"service": service}
    )


@contextlib.contextmanager
def outages_refused() -> Iterator[None]:
    """Within the block, one of ``OUTAGES`` is raised as its 503 (``ServiceUnavailable``)."""
    try:
        yield
    except OUTAGES as exc:
        raise outage_refusal(exc) from exc


def error_body(
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    retry_after: int | None = None,
) -> dict[str, Any]:
    """The error shape; every error answer is built here, and so counted in
    ``agent_errors_total{error_type}`` here. A refusal to retry later carries ``retry_after``
    (seconds) in ``details``, and beside the code, where the AI Agents Platform's clients
    read it."""
    error_count(code)
    error: dict[str, Any] = {"code": code, "message": message, "details": details or {}}
    if retry_after is not None:
        error["details"] = {**error["details"], "retry_after": retry_after}
        error["retry_after"] = retry_after
    return {"error": error}


def refusal_body(exc: ConsoleError) -> dict[str, Any]:
    """``exc`` in the error shape."""
    return error_body(exc.code, exc.message, exc.details, retry_after=exc.retry_after)


def error_response(exc: ConsoleError) -> JsonResponse:
    return JsonResponse(refusal_body(exc), status=exc.status, headers=exc.headers())


_DRF_CODES = {
    drf.ParseError: "malformed_body",
    drf.ValidationError: "invalid_request",
    drf.NotAuthenticated: "not_authenticated",
    drf.AuthenticationFailed: "not_authenticated",
    drf.PermissionDenied: "forbidden",
    drf.NotFound: "not_found",
    drf.MethodNotAllowed: "method_not_allowed",
    drf.NotAcceptable: "not_acceptable",
    drf.UnsupportedMediaType: "unsupported_media_type",
    drf.Throttled: "rate_limited",
}
_UNMAPPED = "error"  # a DRF exception not in _DRF_CODES
ERROR_CODES.update({ConsoleError.code, _UNMAPPED, *_DRF_CODES.values()})


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: domain errors and DRF's own, all in the one shape."""
    # Imported here: rest_framework.views loads the authentication classes, which import us.
    from rest_framework.views import exception_handler as drf_default_handler

    if isinstance(exc, OUTAGES):
        exc = outage_refusal(exc)
    elif isinstance(exc, DataError | OverflowError):
        # A number past what the database holds (SQLite raises OverflowError for an integer
        # beyond 64 bits, PostgreSQL a DataError) in a filter or an id: the caller's mistake.
        exc = BadRequest("a value is out of range for the database")
    if isinstance(exc, ConsoleError):
        return Response(refusal_body(exc), status=exc.status, headers=exc.headers())
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf.PermissionDenied()
    response = drf_default_handler(exc, context)
    if response is None or not isinstance(exc, drf.APIException):
        return response
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), _UNMAPPED)
    if isinstance(exc, drf.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        message = "The request is not valid: " + _first_problem(details)
    else:
        details = {}
        message = str(exc.detail)
    response.data = error_body(code, message, details)
    return response


def _first_problem(details: dict[str, Any]) -> str:
    field, problems = next(iter(details.items()))
    first = problems[0] if isinstance(problems, list) and problems else problems
    if isinstance(first, dict):
        return f"{field}: " + _first_problem(first)
    return str(first) if field == "non_field_errors" else f"{field}: {first}"


def methods_allowed(*allowed: str) -> Callable[[_View], _View]:
    """A plain view (sync or async) that answers other methods with 405, its Allow header and
    the error shape; GET allows HEAD too."""
    methods = [*allowed, "HEAD"] if "GET" in allowed and "HEAD" not in allowed else list(allowed)

    def decorate(view: _View) -> _View:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def answer_async(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if request.method not in methods:
                    return error_response(MethodNotAllowed(methods))
                return await view(request, *args, **kwargs)

            return answer_async  # type: ignore[return-value]

        @functools.wraps(view)
        def answer(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if request.method not in methods:
                return error_response(MethodNotAllowed(methods))
            return view(request, *args, **kwargs)

        return answer  # type: ignore[return-value]

    return decorate


def json_error_page(request: HttpRequest, status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(code, message, {"path": request.path}), status=status)
