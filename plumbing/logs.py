"""Request ids across Celery, and the worker's and beat's log lines in ``LOG_FORMAT``.

A task queued while a request runs carries the request's id in its message headers
(``before_task_publish``); the worker runs the task under that id (``task_prerun``), so its log
lines, and any call it makes to an agent runtime, carry it too. Celery configures its own
logging in the worker and in beat; with ``LOG_FORMAT=json`` its handlers are given the JSON
formatter once it has (``after_setup_logger``), and every handler gets the request id filter.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    task_postrun,
    task_prerun,
)
from django.conf import settings

from wire.logs import (
    REQUEST_ID,
    JsonFormatter,
    RequestIdFilter,
    current_request_id,
    valid_request_id,
)

__all__ = ["TASK_HEADER"]

TASK_HEADER = "request_id"
_tokens: dict[str, Any] = {}


@before_task_publish.connect
def _carry_request_id(headers: dict[str, Any] | None = None, **_: object) -> None:
    request_id = current_request_id()
    if request_id and headers is not None:
        headers.setdefault(TASK_HEADER, request_id)


@task_prerun.connect
def _restore_request_id(task_id: str = "", task: Any = None, **_: object) -> None:
    request_id = valid_request_id(getattr(getattr(task, "request", None), TASK_HEADER, None))
    if request_id:  # else: run eagerly in the request itself, or queued outside any request
        _tokens[task_id] = REQUEST_ID.set(request_id)


@task_postrun.connect
def _forget_request_id(task_id: str = "", **_: object) -> None:
    token = _tokens.pop(task_id, None)
    if token is not None:
        REQUEST_ID.reset(token)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _format_celery_logs(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(RequestIdFilter())
        if settings.LOG_FORMAT == "json":
            handler.setFormatter(JsonFormatter())
