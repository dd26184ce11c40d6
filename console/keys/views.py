"""The key page, for everyone signed in: their own API keys only (another user's key is a 404).

One view per URL: the whole page, or only the key table for an htmx request. Creating answers
with the new key's secret, the one time it is shown, and the table out of band.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST

from console import selectors
from console.keys.forms import ApiKeyForm
from console.pages import page_or_fragment, with_toast
from console.services import api_key_create, api_key_revoke, role_scopes
from plumbing.errors import ConsoleError

__all__ = ["key_create", "key_revoke", "keys"]


def _context(request: HttpRequest, form: ApiKeyForm | None = None) -> dict[str, Any]:
    offered = role_scopes(request.user)
    return {
        "keys": list(selectors.api_key_list(user=request.user)),
        "form": form or ApiKeyForm(offered=offered),
    }


@require_GET
@login_required
def keys(request: HttpRequest) -> HttpResponse:
    return page_or_fragment(
        request, "keys/keys.html", "keys/partials/_key_table.html", _context(request)
    )


@require_POST
@login_required
def key_create(request: HttpRequest) -> HttpResponse:
    """Create a key, or show the form again with what is wrong (422)."""
    form = ApiKeyForm(request.POST, offered=role_scopes(request.user))
    if form.is_valid():
        try:
            key, raw = api_key_create(
                user=request.user,
                name=form.cleaned_data["name"],
                expires_at=form.expires_at(),
                scopes=form.cleaned_data["scopes"],
            )
        except ConsoleError as exc:  # e.g. admin, asked for by a user who is not an operator
            form.add_error("scopes", exc.message)
        else:
            context = _context(request) | {"created": key, "secret": raw}
            response = render(request, "keys/partials/_key_created.html", context)
            response["Cache-Control"] = "no-store"  # the secret is in it
            return with_toast(request, response, "success", f"Key {key.prefix}… created.")
    return render(request, "keys/partials/_key_form.html", {"form": form}, status=422)


@require_POST
@login_required
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(selectors.api_key_list(user=request.user), pk=key_id)
    api_key_revoke(key=key)
    key.refresh_from_db(fields=["revoked_at"])
    response = render(request, "keys/partials/_key_row.html", {"key": key})
    return with_toast(request, response, "success", f"Key {key.prefix}… revoked.")
