"""Every HTTP status with its reason phrase in the status line, under daphne too.

Twisted (daphne's HTTP server) writes the status line from a table of its own, which lacks the
newer statuses (421-431, 451, 511): a 429 went out as ``HTTP/1.1 429 Unknown Status``. uvicorn
takes its phrases from the standard library's ``http.HTTPStatus``; Twisted's table is filled
from it here.
"""

from __future__ import annotations

import http
import sys

__all__ = ["fill_twisted_reason_phrases"]


def fill_twisted_reason_phrases() -> None:
    """Add the standard library's reason phrases that Twisted's table lacks, when Twisted's HTTP
    server is loaded (daphne loads it before the application); else nothing."""
    twisted_http = sys.modules.get("twisted.web.http")
    if twisted_http is None:
        return
    for status in http.HTTPStatus:
        twisted_http.RESPONSES.setdefault(status.value, status.phrase.encode("ascii"))
