"""Inline SVG for report.html: the shared pieces (axes, ticks, precision colours, legends, label placement) and
the latency-vs-fidelity scatter plot; bars.py draws the bar charts with them.

Hand-written (no plotting library) so that report.html stays one self-contained file with no scripts. Every
chart scales down to its box (a viewBox, width 100%) and never grows past its drawn size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from modelport.harness.report.aggregate import ReportRow, pareto_keys
from modelport.harness.report.fmt import escape, ms

_NARROW, _WIDE = set("fijlrtI.,:;'|!()[]/- "), set("mwMW%+<>=&")


def text_width(text: str, bold: bool = False) -> float:
    """The width of 12px text, from per-glyph widths of DejaVu Sans (among the wider fonts a browser falls back
    to), so that labels placed apart by it stay apart in narrower fonts too."""
    width = sum(4.2 if c in _NARROW else 10.5 if c in _WIDE else 8.8 if c.isupper() else 7.7 if c.isdigit() else 7.4
                for c in text)
    return width * (1.1 if bold else 1.0)
PRECISION_COLOURS = {"fp32": "#4c78a8", "fp16": "#f58518", "int8": "#54a24b", "int8-dynamic": "#b279a2"}
OTHER_COLOUR = "#8c8c8c"


def colour(precision: str) -> str:
    """The one colour a precision has in every chart."""
    return PRECISION_COLOURS.get(precision, OTHER_COLOUR)


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi], about n of them."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 12) for i in range(int((hi - start) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks per decade within [lo, hi] (only the decades where that would crowd the axis)."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    mantissas = (1,) if len(decades) > 4 else (1, 2, 5)
    return [m * 10.0**e for e in decades for m in mantissas if lo <= m * 10.0**e <= hi]


class Axis:
    """Maps data to pixels, linearly or on a log scale, with a margin around the data (none at a zero base)."""

    def __init__(self, lo: float, hi: float, start: float, length: float, *, log: bool, flip: bool = False,
                 margin: float = 0.08) -> None:
        self.log, self.flip, self.start, self.length = log, flip, start, length
        a, b = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        span = (b - a) or (abs(a) * 0.1 or 1.0)
        self.a = a if (not log and lo == 0) else a - margin * span
        self.b = b + margin * span
        self.lo, self.hi = (10**self.a, 10**self.b) if log else (self.a, self.b)

    def __call__(self, v: float) -> float:
        t = ((math.log10(max(v, self.lo)) if self.log else v) - self.a) / (self.b - self.a)
        return self.start + ((1 - t) if self.flip else t) * self.length

    def ticks(self) -> list[float]:
        return log_ticks(self.lo, self.hi) if self.log else ticks(self.lo, self.hi)


def svg_open(width: int, height: int, title: str, kind: str) -> list[str]:
    """The opening of one chart: its drawn size as the viewBox, its title as text and as the accessible name."""
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
            f'<text x="8" y="16" class="title">{escape(title)}</text>']


def legend(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    """A row of (colour, text) keys starting at x, y."""
    parts = []
    for fill, text in items:
        parts.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{fill}"/>'
                     f'<text x="{x + 14:.1f}" y="{y:.1f}">{escape(text)}</text>')
        x += 24 + text_width(text)
    return "".join(parts)


def _overlaps(box: tuple[float, ...], taken: Sequence[tuple[float, ...]]) -> bool:
    return any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken)


def place_labels(points: list[tuple[float, float, str, int]], bounds: tuple[float, float, float, float]
                 ) -> list[tuple[float, float, str, str, tuple[float, float] | None]]:
    """Labels near their points, none overlapping another label or a point: beside it where there is room,
    else farther out with a leader line. Placed by priority (lower first); one that fits nowhere is left out
    (its point keeps its tooltip).

    Returns (x, y, text, anchor, leader) per placed label; `leader` is the point to draw a line back to, if any.
    """
    x0, y0, x1, y1 = bounds
    taken: list[tuple[float, ...]] = [(x - 6, y - 6, x + 6, y + 6) for x, y, _, _ in points]
    placed = []
    for x, y, text, _ in sorted(points, key=lambda p: p[3]):
        w = text_width(text)
        for dist in (8, 20, 34, 50):
            spot = None
            for dx, dy, anchor in ((dist, 4, "start"), (-dist, 4, "end"), (dist, -dist, "start"),
                                   (dist, dist + 8, "start"), (-dist, -dist, "end"), (-dist, dist + 8, "end"),
                                   (-w / 2, -dist, "middle"), (-w / 2, dist + 10, "middle")):
                left = x + dx if anchor == "start" else x + dx - w if anchor == "end" else x + dx
                box = (left - 2, y + dy - 12, left + w + 2, y + dy + 4)  # the text's ascent and descent
                if x0 <= box[0] and box[2] <= x1 and y0 <= box[1] and box[3] <= y1 and not _overlaps(box, taken):
                    spot = (x + dx + (w / 2 if anchor == "middle" else 0), y + dy, anchor, box)
                    break
            if spot:
                taken.append(spot[3])
                placed.append((spot[0], spot[1], text, spot[2], (x, y) if dist > 8 else None))
                break
    return placed


def _flat(scores: Sequence[float]) -> bool:
    return len(scores) > 1 and max(scores) - min(scores) <= 1e-9


def scatter_svg(rows: Sequence[ReportRow], with_metric: bool, title: str, y_label: str,
                recommended: str | None = None) -> str:
    """Latency (x) against fidelity (y): the Pareto front filled and joined, the recommended row ringed.

    Where every row has the same task metric (a small model every runtime gets right), the metric cannot
    tell the rows apart, so the plot shows SQNR against PyTorch instead and says so. Every point has a
    tooltip and, where it fits, a label (front and recommendation first).
    """
    note = None
    metric_scores = [s for r in rows if r.status == "ok" and r.p50_ms and (s := r.fidelity_score(with_metric))
                     is not None]
    if with_metric and _flat(metric_scores) and any(r.fidelity_score(False) is not None for r in rows):
        note = f"Every row has {y_label} {metric_scores[0]:g}: the points are set by SQNR instead."
        with_metric, y_label = False, "SQNR vs PyTorch FP32, dB"
    pts = [(r, r.p50_ms, score) for r in rows
           if r.status == "ok" and r.p50_ms and (score := r.fidelity_score(with_metric)) is not None]
    width, left, right, top, bottom = 760, 64, 16, 48, 44
    height = 400 + (16 if note else 0)
    pw, ph = width - left - right, 400 - top - bottom
    parts = svg_open(width, height, title, "pareto")
    if not pts:
        parts.append(f'<text x="{left}" y="{top + 20}">No row has both latency and fidelity to plot.</text></svg>')
        return "".join(parts)
    front_keys = pareto_keys([r for r, _, _ in pts], with_metric)
    finite = [y for _, _, y in pts if math.isfinite(y)]
    exact_at = (max(finite) + max(5.0, 0.1 * (max(finite) - min(finite)))) if finite else 0.0
    ys = [y if math.isfinite(y) else exact_at for _, _, y in pts]
    xs = [x for _, x, _ in pts]
    fx = Axis(min(xs), max(xs), left, pw, log=max(xs) / min(xs) > 8)
    fy = Axis(min(ys), max(ys), top, ph, log=False, flip=True)
    lx = left
    for fill, stroke, text in (("#3a3", "#1a1", "Pareto front"), ("#fff", "#36c", "within budget"),
                               ("#fff", "#c33", "over budget"), ("none", "#000", "recommended")):
        parts.append(f'<circle cx="{lx + 5}" cy="30" r="4.5" fill="{fill}" stroke="{stroke}" stroke-width="2"/>'
                     f'<text x="{lx + 13}" y="34">{text}</text>')
        lx += 24 + text_width(text)
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in fy.ticks():
        if finite and t > max(finite) + 1e-9 and len(finite) < len(pts):
            continue
        parts.append(f'<line x1="{left - 4}" y1="{fy(t):.1f}" x2="{left + pw}" y2="{fy(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{fy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    if len(finite) < len(pts):
        parts.append(f'<text x="{left - 6}" y="{fy(exact_at) + 4:.1f}" text-anchor="end">exact</text>')
    for t in fx.ticks():
        x = fx(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph + 4}" stroke="#eee"/>'
                     f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 36}" text-anchor="middle" class="axis">p50 latency, ms'
                 f'{" (log scale)" if fx.log else ""}: lower is better</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" class="axis" '
                 f'transform="rotate(-90 14 {top + ph / 2})">{escape(y_label)}: higher is better</text>')
    if note:
        parts.append(f'<text x="{left}" y="{height - 6}" class="note">{escape(note)}</text>')
    front = sorted((x, y) for (r, x, _), y in zip(pts, ys, strict=True) if r.key in front_keys)
    if len(front) > 1:
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#3a3" stroke-width="1.5" '
                     'stroke-dasharray="4 3"/>')
    labels = []
    for (r, x, y), py in zip(pts, ys, strict=True):
        on_front = r.key in front_keys
        fill = "#3a3" if on_front else "#fff"
        stroke = "#1a1" if on_front else ("#36c" if r.meets_budget else "#c33")
        shown = "identical to PyTorch" if not math.isfinite(y) else f"{y:.2f}"
        if r.key == recommended:
            parts.append(f'<circle cx="{fx(x):.1f}" cy="{fy(py):.1f}" r="9" fill="none" stroke="#000" '
                         'stroke-width="1.5"/>')
        tooltip = f"{escape(r.label)}: p50 {ms(x)} ms, {escape(y_label)} {shown}"
        parts.append(f'<circle cx="{fx(x):.1f}" cy="{fy(py):.1f}" r="5" fill="{fill}" stroke="{stroke}" '
                     f'stroke-width="2" class="point"><title>{tooltip}</title></circle>')
        labels.append((fx(x), fy(py), r.label, 0 if r.key == recommended else 1 if on_front else 2))
    for x, y, text, anchor, leader in place_labels(labels, (left, top, left + pw, top + ph)):
        if leader:
            px, py = leader
            parts.append(f'<line x1="{px:.1f}" y1="{py:.1f}" x2="{x:.1f}" y2="{y - 4:.1f}" stroke="#bbb"/>')
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="label">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)
