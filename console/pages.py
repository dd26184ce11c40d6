"""What the console's HTML pages share: operators-only access (``is_operator``), one view per
URL that renders the whole page, or only its fragment when htmx asks (but not for a boosted
navigation, which wants the page), and toasts appended to an action's answer."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string

from console.api.permissions import is_operator

__all__ = ["operator_required", "page_or_fragment", "wants_fragment", "with_toast"]


def operator_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Anonymous visitors go to the login page; signed-in non-operators get 403."""

    @wraps(view)
    @login_required
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_operator(request):
            raise PermissionDenied("operators only")
        return view(request, *args, **kwargs)

    return wrapped


def wants_fragment(request: HttpRequest) -> bool:
    return bool(request.htmx) and not request.htmx.boosted


def page_or_fragment(
    request: HttpRequest, page: str, fragment: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    template = fragment if wants_fragment(request) else page
    return render(request, template, context, status=status)


def with_toast(request: HttpRequest, response: HttpResponse, level: str, text: str) -> HttpResponse:
    """Append a toast to an htmx response, out of band."""
    toast = render_to_string(
        "console/partials/_toasts_oob.html", {"level": level, "text": text}, request=request
    )
    response.content += toast.encode()
    return response
