"""An agent's log lines, as the logs dialog shows them."""

from __future__ import annotations

import json

from dashboard.logview import log_lines


def test_json_records_become_time_level_message_and_the_rest():
    record = {
        "time": "2026-12-07T18:40:01.123+00:00",
        "level": "WARNING",
        "logger": "runtime.chat",
        "message": "turn took long",
        "request_id": "r-1",
        "tokens": 12,
    }
    [line] = log_lines(json.dumps(record) + "\n\n")

    assert (line.time, line.level, line.message) == ("18:40:01.123", "WARNING", "turn took long")
    assert line.logger == "runtime.chat"
    assert line.extra == [("request_id", "r-1"), ("tokens", "12")]
    assert line.level_class == "warning" and not line.text


def test_other_lines_are_kept_as_they_came():
    lines = log_lines('plain start-up text\n{"not": "a record"}\n[1, 2]')

    assert [line.text for line in lines] == ["plain start-up text", '{"not": "a record"}', "[1, 2]"]


def test_an_exception_keeps_its_traceback():
    record = {"time": "x", "level": "ERROR", "message": "boom", "exception": "Traceback\n  ..."}
    [line] = log_lines(json.dumps(record))

    assert line.exception == "Traceback\n  ..." and line.level_class == "error"
    assert line.extra == []
