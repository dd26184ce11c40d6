"""What a finished page must not do, checked in the browser: content wider than the viewport,
an element clipped by its container or past the viewport's right edge, chart labels on top of
one another or too small to read.

A container that scrolls on purpose (``overflow-x: auto`` or ``scroll``, a table's wrapper) is
not clipping: ``layout_problems(page, scrolling=False)`` also refuses those, for widths where
everything should fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Elements clipped on purpose are left alone: text cut with an ellipsis, the visually hidden.
_SCRIPT = (Path(__file__).parent / "layout.js").read_text()


def layout_problems(page: Any, *, scrolling: bool = True) -> list[str]:
    """What overflows, is clipped or overlaps on ``page`` as it is now."""
    return page.evaluate(_SCRIPT, scrolling)


def assert_finished(page: Any, *, scrolling: bool = True) -> None:
    problems = layout_problems(page, scrolling=scrolling)
    assert not problems, f"{page.url} at {page.viewport_size['width']}px:\n" + "\n".join(problems)
