"""What a finished page must not do, checked in the browser: content wider than the viewport,
an element clipped by its container or past the viewport's right edge, chart labels on top of
one another or too small to read.

A container that scrolls on purpose (``overflow-x: auto`` or ``scroll``, a table's wrapper) is
not clipping: ``layout_problems(page, scrolling=False)`` also refuses those, for widths where
everything should fit."""

from __future__ import annotations

from typing import Any

# Elements clipped on purpose: text cut with an ellipsis, the visually hidden, the skip link.
_SCRIPT = """
(allowScroll) => {
  const vw = document.documentElement.clientWidth;
  const problems = [];
  const name = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    const cls = typeof el.className === "string" ? el.className.trim() : "";
    if (cls) s += "." + cls.split(/\\s+/).slice(0, 3).join(".");
    const text = (el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 40);
    return text ? `${s} "${text}"` : s;
  };
  const visible = (el) => {
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.display === "none") return false;
    const r = el.getBoundingClientRect();
    return r.width > 1 && r.height > 1;
  };
  const hidden = (el) => el.closest(".sr-only, .visually-hidden, .skip-link, [hidden], .nav-toggle, template");
  const page = document.documentElement.scrollWidth;
  if (page > vw + 1) problems.push(`the page is ${page}px wide in a ${vw}px viewport`);
  for (const el of document.querySelectorAll("body *")) {
    if (hidden(el) || !visible(el)) continue;
    const style = getComputedStyle(el);
    const r = el.getBoundingClientRect();
    // Text clipped by its own box, without an ellipsis to say so.
    const clips = ["hidden", "clip"].includes(style.overflowX);
    if (clips && el.scrollWidth > el.clientWidth + 1 && style.textOverflow !== "ellipsis"
        && !(el instanceof SVGElement)) {
      problems.push(`${name(el)} clips its content (${el.scrollWidth}px in ${el.clientWidth}px)`);
    }
    const scrolls = ["auto", "scroll"].includes(style.overflowX);
    if (scrolls && el.scrollWidth > el.clientWidth + 1 && !allowScroll) {
      problems.push(`${name(el)} scrolls sideways (${el.scrollWidth}px in ${el.clientWidth}px)`);
    }
    // Past the nearest container that clips or scrolls, or past the viewport.
    let box = el.parentElement;
    while (box && box !== document.body) {
      const o = getComputedStyle(box).overflowX;
      if (o !== "visible") break;
      box = box.parentElement;
    }
    if (box && box !== document.body) {
      const o = getComputedStyle(box).overflowX;
      const b = box.getBoundingClientRect();
      const outside = r.right > b.right + 1 || r.left < b.left - 1;
      if (outside && (o === "hidden" || o === "clip") && !(el instanceof SVGElement)
          && getComputedStyle(box).textOverflow !== "ellipsis") {
        problems.push(`${name(el)} is cut off by ${name(box)}`);
      }
      if (outside && ["auto", "scroll"].includes(o)) continue;  // reachable by scrolling
    }
    if (style.position !== "fixed" && r.right > vw + 1) {
      problems.push(`${name(el)} passes the viewport's right edge (${Math.round(r.right)}px > ${vw}px)`);
    }
  }
  // Charts: labels apart from one another, inside their drawing, and big enough to read.
  for (const svg of document.querySelectorAll("svg")) {
    if (hidden(svg) || !visible(svg)) continue;
    const s = svg.getBoundingClientRect();
    const texts = [...svg.querySelectorAll("text")].filter((t) => (t.textContent || "").trim());
    const boxes = texts.map((t) => [t, t.getBoundingClientRect()]);
    for (const [t, r] of boxes) {
      if (r.height < 9) problems.push(`chart label "${t.textContent.trim()}" is ${r.height.toFixed(1)}px tall`);
      if (r.left < s.left - 1 || r.right > s.right + 1 || r.top < s.top - 1 || r.bottom > s.bottom + 1) {
        problems.push(`chart label "${t.textContent.trim()}" passes its chart's edge`);
      }
    }
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const [a, ra] = boxes[i], [b, rb] = boxes[j];
        const w = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
        const h = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
        if (w > 1 && h > 1) {
          problems.push(`chart labels "${a.textContent.trim()}" and "${b.textContent.trim()}" overlap`);
        }
      }
    }
  }
  return [...new Set(problems)];
}
"""


def layout_problems(page: Any, *, scrolling: bool = True) -> list[str]:
    """What overflows, is clipped or overlaps on ``page`` as it is now."""
    return page.evaluate(_SCRIPT, scrolling)


def assert_finished(page: Any, *, scrolling: bool = True) -> None:
    problems = layout_problems(page, scrolling=scrolling)
    assert not problems, f"{page.url} at {page.viewport_size['width']}px:\n" + "\n".join(
        problems
    )
