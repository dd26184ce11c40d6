(allowScroll) => {
  const vw = document.documentElement.clientWidth;
  const problems = [];
  const name = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    const cls = typeof el.className === "string" ? el.className.trim() : "";
    if (cls) s += "." + cls.split(/\s+/).slice(0, 3).join(".");
    const text = (el.textContent || "").trim().replace(/\s+/g, " ").slice(0, 40);
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
    const field = ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName);
    if (clips && !field && el.scrollWidth > el.clientWidth + 1 && style.textOverflow !== "ellipsis"
        && !(el instanceof SVGElement)) {
      problems.push(`${name(el)} clips its content (${el.scrollWidth}px in ${el.clientWidth}px)`);
    }
    const scrolls = ["auto", "scroll"].includes(style.overflowX);
    if (scrolls && el.scrollWidth > el.clientWidth + 1 && !allowScroll) {
      problems.push(`${name(el)} scrolls sideways (${el.scrollWidth}px in ${el.clientWidth}px)`);
    }
    // Past the nearest container that clips or scrolls (a drawing's own box aside), or past
    // the viewport; what a scrolling container holds is reachable, so it is not cut off.
    let scrolled = false, clipper = null;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (a instanceof SVGElement) continue;
      const o = getComputedStyle(a).overflowX;
      if (["auto", "scroll"].includes(o)) { scrolled = true; break; }
      if (!clipper && (o === "hidden" || o === "clip")) clipper = a;
    }
    if (clipper && !(el instanceof SVGElement) && getComputedStyle(clipper).textOverflow !== "ellipsis") {
      const b = clipper.getBoundingClientRect();
      if (r.right > b.right + 1 || r.left < b.left - 1) {
        problems.push(`${name(el)} is cut off by ${name(clipper)}`);
      }
    }
    if (!scrolled && style.position !== "fixed" && r.right > vw + 1) {
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
