"""The console's home page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

__all__ = ["home"]


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "console/home.html")
