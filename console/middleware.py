"""Middleware: the X-RateLimit-* headers on every API response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

__all__ = ["RateLimitHeadersMiddleware"]


class RateLimitHeadersMiddleware:
    """Copies the request rate a view counted the request against (``request.rate_status``,
    set by ``QuotaThrottle``, ``request_user`` and the gateway) onto its response."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[..., HttpResponseBase | Awaitable[HttpResponseBase]]):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if iscoroutinefunction(self):
            return self._acall(request)
        return self._headers(request, self.get_response(request))  # type: ignore[arg-type]

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        return self._headers(request, await self.get_response(request))  # type: ignore[misc]

    @staticmethod
    def _headers(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        status = getattr(request, "rate_status", None)
        if status is not None:
            for name, value in status.headers().items():
                response.headers.setdefault(name, value)
        return response
