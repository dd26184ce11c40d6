"""Log lines as JSON, each with the request id of the work it belongs to.

Shared by the console (web, gateway, worker, beat) and the agent runtime, so it imports nothing
from Django. A request id travels in the ``X-Request-ID`` header from a client to the console,
from the console to a runtime, and from a runtime to the gateway; in between it lives in a
context variable that ``RequestIdFilter`` adds to every log record.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

__all__ = [
    "HEADER",
    "REQUEST_ID",
    "JsonFormatter",
    "PlainFormatter",
    "RequestIdFilter",
    "current_request_id",
    "new_request_id",
    "request_id_or_new",
    "using_request_id",
    "valid_request_id",
]

HEADER = "X-Request-ID"
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# What a caller's id may be: enough for UUIDs and most tracers' ids, nothing that could forge a
# log line or smuggle a header.
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")

# Attributes every LogRecord has: whatever else a record carries came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def current_request_id() -> str:
    """The request id of the work running now ("" outside any)."""
    return REQUEST_ID.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(raw: str | None) -> str | None:
    """``raw`` when it is an acceptable request id, else None."""
    if raw and _VALID.fullmatch(raw):
        return raw
    return None


def request_id_or_new(raw: str | None) -> str:
    """A caller's request id when acceptable, else a new one."""
    return valid_request_id(raw) or new_request_id()


@contextlib.contextmanager
def using_request_id(request_id: str) -> Iterator[str]:
    """Run the block under ``request_id``: its log lines, and the work it starts, carry it."""
    token = REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the current one, or "") to every record it sees. Attach it to a
    handler, so that records of every logger passing through it carry the id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id`` when there is one, ``exception`` with its traceback, and any ``extra=``
    fields (as text when JSON cannot hold them)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "") or REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        for name, value in vars(record).items():
            if name not in _STANDARD and name != "request_id" and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """``time level logger message``, and ``request_id=…`` at the end when there is one: lines
    for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "") or REQUEST_ID.get()
        if not request_id:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} request_id={request_id}{newline}{rest}"
