"""The key page's form: a new key's name, scopes and lifetime."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.utils import timezone

from console.models import ApiKey, default_api_key_scopes

__all__ = ["ApiKeyForm"]

LIFETIMES = (
    ("", "Never"),
    ("7", "7 days"),
    ("30", "30 days"),
    ("90", "90 days"),
    ("365", "1 year"),
)


class ApiKeyForm(forms.Form):
    """Who may hold which scope is ``api_key_create``'s to say; the form only offers them."""

    name = forms.CharField(
        max_length=ApiKey._meta.get_field("name").max_length,
        required=False,
        help_text="A label, to tell your keys apart.",
    )
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=default_api_key_scopes,
        error_messages={"required": "Choose at least one scope."},
    )
    expires_in = forms.TypedChoiceField(
        label="Expires",
        choices=LIFETIMES,
        required=False,
        coerce=int,
        empty_value=None,
    )

    def __init__(self, *args: object, offered: frozenset[str], **kwargs: object) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.offered = offered

    def expires_at(self) -> datetime | None:
        days = self.cleaned_data["expires_in"]
        return timezone.now() + timedelta(days=days) if days else None
