"""The latency-vs-fidelity scatter plot as inline SVG: axes, ticks, the Pareto front, labels that fit.

Hand-written (no plotting library) so that report.html stays one self-contained file with no scripts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from modelport.harness.report.aggregate import ReportRow
from modelport.harness.report.fmt import escape, ms


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi], about n of them."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 12) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks per decade within [lo, hi] (only the decades where that would crowd the axis)."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    mantissas = (1,) if len(decades) > 4 else (1, 2, 5)
    return [m * 10.0**e for e in decades for m in mantissas if lo <= m * 10.0**e <= hi]


class _Axis:
    """Maps data to pixels, linearly or on a log scale, with a margin around the data."""

    def __init__(self, lo: float, hi: float, start: float, length: float, *, log: bool, flip: bool) -> None:
        self.log, self.flip, self.start, self.length = log, flip, start, length
        a, b = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        span = (b - a) or (abs(a) * 0.1 or 1.0)
        self.a, self.b = a - 0.08 * span, b + 0.08 * span
        self.lo, self.hi = (10**self.a, 10**self.b) if log else (self.a, self.b)

    def __call__(self, v: float) -> float:
        t = ((math.log10(v) if self.log else v) - self.a) / (self.b - self.a)
        return self.start + ((1 - t) if self.flip else t) * self.length

    def ticks(self) -> list[float]:
        return _log_ticks(self.lo, self.hi) if self.log else _ticks(self.lo, self.hi)


def _place_labels(points: list[tuple[float, float, str, int]], bounds: tuple[float, float, float, float]
                  ) -> list[tuple[float, float, str, str]]:
    """Labels beside their points without overlapping each other or the points; by priority, some are left out.

    `points` are (x, y, text, priority); lower priority numbers are placed first.
    """
    char_w, h = 6.8, 11.0
    x0, y0, x1, y1 = bounds
    taken = [(x - 5, y - 5, x + 5, y + 5) for x, y, _, _ in points]
    placed = []
    for x, y, text, _ in sorted(points, key=lambda p: p[3]):
        w = char_w * len(text)
        for dx, dy, anchor in ((8, 4, "start"), (8, -8, "start"), (8, 15, "start"), (-8, 4, "end"),
                               (-8, -8, "end"), (-8, 15, "end")):
            left = x + dx if anchor == "start" else x + dx - w
            box = (left, y + dy - h + 2, left + w, y + dy + 2)
            inside = x0 <= box[0] and box[2] <= x1 and y0 <= box[1] and box[3] <= y1
            if inside and not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3]
                                  for t in taken):
                taken.append(box)
                placed.append((x + dx, y + dy, text, anchor))
                break
    return placed


def scatter_svg(rows: Sequence[ReportRow], with_metric: bool, title: str, y_label: str,
                recommended: str | None = None) -> str:
    """Latency (x) against fidelity (y): the Pareto front filled and joined, the recommended row ringed.

    Every point has a tooltip; labels are placed where they fit (front and recommendation first).
    """
    pts = [(r, r.p50_ms, score) for r in rows
           if r.status == "ok" and r.p50_ms and (score := r.fidelity_score(with_metric)) is not None]
    width, height, left, right, top, bottom = 760, 400, 64, 16, 44, 44
    pw, ph = width - left - right, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" font-weight="bold">{escape(title)}</text>']
    if not pts:
        parts.append(f'<text x="{left}" y="{top + 20}">No row has both latency and fidelity to plot.</text></svg>')
        return "".join(parts)
    finite = [y for _, _, y in pts if math.isfinite(y)]
    exact_at = (max(finite) + max(5.0, 0.1 * (max(finite) - min(finite)))) if finite else 0.0
    ys = [y if math.isfinite(y) else exact_at for _, _, y in pts]
    xs = [x for _, x, _ in pts]
    fx = _Axis(min(xs), max(xs), left, pw, log=max(xs) / min(xs) > 8, flip=False)
    fy = _Axis(min(ys), max(ys), top, ph, log=False, flip=True)
    legend = [("#3a3", "#1a1", "Pareto front"), ("#fff", "#36c", "within budget"), ("#fff", "#c33", "over budget"),
              ("none", "#000", "recommended")]
    lx = left
    for fill, stroke, text in legend:
        parts.append(f'<circle cx="{lx + 5}" cy="30" r="4.5" fill="{fill}" stroke="{stroke}" stroke-width="2"/>'
                     f'<text x="{lx + 13}" y="34">{text}</text>')
        lx += 26 + 6.8 * len(text)
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
    parts.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">p50 latency, ms'
                 f'{" (log scale)" if fx.log else ""}: lower is better</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">'
                 f'{escape(y_label)}: higher is better</text>')
    front = sorted((x, y) for (r, x, _), y in zip(pts, ys, strict=True) if r.pareto)
    if len(front) > 1:
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#3a3" stroke-width="1.5" '
                     'stroke-dasharray="4 3"/>')
    labels = []
    for (r, x, y), py in zip(pts, ys, strict=True):
        fill = "#3a3" if r.pareto else "#fff"
        stroke = "#1a1" if r.pareto else ("#36c" if r.meets_budget else "#c33")
        name = r.label
        shown = "identical to PyTorch" if not math.isfinite(y) else f"{y:.2f}"
        if r.key == recommended:
            parts.append(f'<circle cx="{fx(x):.1f}" cy="{fy(py):.1f}" r="9" fill="none" stroke="#000" '
                         'stroke-width="1.5"/>')
        tooltip = f"{escape(name)}: p50 {ms(x)} ms, {escape(y_label)} {shown}"
        parts.append(f'<circle cx="{fx(x):.1f}" cy="{fy(py):.1f}" r="5" fill="{fill}" stroke="{stroke}" '
                     f'stroke-width="2"><title>{tooltip}</title></circle>')
        priority = 0 if r.key == recommended else 1 if r.pareto else 2
        labels.append((fx(x), fy(py), name, priority))
    for x, y, text, anchor in _place_labels(labels, (left, top, left + pw, top + ph)):
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)
