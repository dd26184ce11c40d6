"""Cursor pagination for every list of the API: stable under inserts, no page counting."""

from __future__ import annotations

from rest_framework.pagination import CursorPagination

__all__ = ["ApiCursorPagination"]


class ApiCursorPagination(CursorPagination):
    """Newest first by id, a unique and immutable key, so a cursor never skips or repeats a
    row; ``page_size`` picks up to ``max_page_size`` rows a page."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
