"""An agent runtime's log tail, read for people: its JSON lines (``wire.logs``'s
``JsonFormatter``) become time, level, message and the rest as ``key=value``; any other line
is kept as it came."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["LogLine", "log_lines"]

_SHOWN = ("time", "level", "logger", "message", "exception", "stack")


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line: ``text`` alone when it was not a JSON record."""

    text: str = ""
    time: str = ""
    level: str = ""
    logger: str = ""
    message: str = ""
    extra: list[tuple[str, str]] = field(default_factory=list)
    exception: str = ""

    @property
    def level_class(self) -> str:
        return {"WARNING": "warning", "ERROR": "error", "CRITICAL": "error"}.get(self.level, "")


def _clock(stamp: str) -> str:
    """``2026-12-07T18:40:01.123+00:00`` as ``18:40:01.123``; anything else as it is."""
    _, sep, rest = stamp.partition("T")
    return rest[:12] if sep else stamp


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def log_lines(tail: str) -> list[LogLine]:
    lines = []
    for raw in tail.splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "message" not in record:
            lines.append(LogLine(text=raw))
            continue
        lines.append(
            LogLine(
                time=_clock(str(record.get("time", ""))),
                level=str(record.get("level", "")),
                logger=str(record.get("logger", "")),
                message=_text(record.get("message", "")),
                extra=[(k, _text(v)) for k, v in record.items() if k not in _SHOWN],
                exception="\n".join(
                    str(record[k]) for k in ("exception", "stack") if record.get(k)
                ),
            )
        )
    return lines
