"""The bar charts of report.html as inline SVG: latency per batch size (p50 bars, p90-p99 whiskers) and artifact
size, one bar per row, grouped by runtime, coloured by precision (svg.py's colours, shared with the legend)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelport.harness.report.aggregate import ReportRow
from modelport.harness.report.fmt import escape, ms, size
from modelport.harness.report.svg import Axis, colour, legend, svg_open, text_width

LOG_RATIO = 30  # above this spread of values the axis is logarithmic, so the fastest bars stay visible
BAR, GAP, GROUP_GAP = 18, 4, 10


@dataclass(frozen=True)
class Bar:
    label: str
    precision: str
    value: float
    text: str  # the value as printed beside the bar
    tooltip: str
    whisker: tuple[float, float] | None = None


def _groups(rows: Sequence[ReportRow], bar) -> list[tuple[str, list[Bar]]]:
    """Bars grouped by runtime: PyTorch first, then runtimes in the order of their smallest value."""
    by_runtime: dict[str, list[Bar]] = {}
    for r in rows:
        if (made := bar(r)) is not None:
            by_runtime.setdefault("PyTorch" if r.is_baseline else (r.title or r.backend), []).append(made)
    for bars in by_runtime.values():
        bars.sort(key=lambda b: b.value)
    return sorted(by_runtime.items(), key=lambda kv: (kv[0] != "PyTorch", kv[1][0].value))


def _chart(groups: list[tuple[str, list[Bar]]], title: str, kind: str, axis_title: str) -> str:
    """Horizontal bars: runtime names on the left, the precision on each bar, the value beside it."""
    bars = [b for _, group in groups for b in group]
    name_w = 14 + max(text_width(name, bold=True) for name, _ in groups)
    label_w = 8 + max(text_width(b.label) for b in bars)
    text_w = 10 + max(text_width(b.text) for b in bars)
    width, top = 760, 50
    left = name_w + label_w
    pw = width - left - text_w - 8
    ph = sum(len(g) * (BAR + GAP) for _, g in groups) + GROUP_GAP * (len(groups) - 1)
    height = top + ph + 42
    ends = [b.whisker[1] if b.whisker else b.value for b in bars]
    lo, hi = min(b.value for b in bars), max(ends)
    log = hi / lo > LOG_RATIO if lo > 0 else False
    fx = Axis(lo if log else 0.0, hi, left, pw, log=log, margin=0.02)
    parts = svg_open(width, height, title, kind)
    precisions = list(dict.fromkeys(b.precision for b in bars))
    parts.append(legend([(colour(p), p) for p in precisions], 8, 34))
    for t in fx.ticks():
        x = fx(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + ph}" stroke="#eee"/>'
                     f'<text x="{x:.1f}" y="{top + ph + 14}" text-anchor="middle">{t:g}</text>')
    base = fx(fx.lo)
    y = top
    for i, (name, group) in enumerate(groups):
        if i:
            parts.append(f'<line x1="8" y1="{y - GROUP_GAP / 2:.1f}" x2="{width - 8}" y2="{y - GROUP_GAP / 2:.1f}" '
                         'stroke="#ddd"/>')
        parts.append(f'<text x="8" y="{y + BAR - 4}" class="group">{escape(name)}</text>')
        for b in group:
            x1 = fx(b.value)
            parts.append(f'<text x="{left - 6:.1f}" y="{y + BAR - 4}" text-anchor="end">{escape(b.label)}</text>'
                         f'<rect x="{base:.1f}" y="{y}" width="{max(x1 - base, 1):.1f}" height="{BAR}" '
                         f'fill="{colour(b.precision)}" class="bar"><title>{escape(b.tooltip)}</title></rect>')
            end = x1
            if b.whisker:
                w1, w2 = fx(b.whisker[0]), fx(b.whisker[1])
                mid = y + BAR / 2
                parts.append(f'<g class="whisker" stroke="#222" stroke-width="1.2">'
                             f'<line x1="{w1:.1f}" y1="{mid}" x2="{w2:.1f}" y2="{mid}"/>'
                             f'<line x1="{w1:.1f}" y1="{mid - 4}" x2="{w1:.1f}" y2="{mid + 4}"/>'
                             f'<line x1="{w2:.1f}" y1="{mid - 4}" x2="{w2:.1f}" y2="{mid + 4}"/></g>')
                end = max(end, w2)
            parts.append(f'<text x="{end + 5:.1f}" y="{y + BAR - 4}" class="value">{escape(b.text)}</text>')
            y += BAR + GAP
        y += GROUP_GAP
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" class="axis">'
                 f'{escape(axis_title)}{" (log scale)" if log else ""}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _latency_bar(r: ReportRow) -> Bar | None:
    if r.status != "ok" or not r.p50_ms:
        return None
    whisker = (r.p90_ms, r.p99_ms) if r.p90_ms and r.p99_ms else None
    spread = f", p90 {ms(r.p90_ms)}, p99 {ms(r.p99_ms)}" if whisker else ""
    return Bar(r.precision, r.precision, r.p50_ms, f"{ms(r.p50_ms)} ms",
               f"{r.label}: p50 {ms(r.p50_ms)} ms{spread}", whisker)


def latency_svg(rows: Sequence[ReportRow], title: str) -> str | None:
    """p50 latency per row (bars) with its p90 to p99 spread (whiskers); None when no row was timed."""
    groups = _groups(rows, _latency_bar)
    if not groups:
        return None
    return _chart(groups, title, "latency", "latency, ms: bar p50, whisker p90 to p99 (shorter is faster)")


def size_svg(rows: Sequence[ReportRow], title: str) -> str | None:
    """The size of each artifact (once per backend, precision and options); None when no row records one."""
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for r in rows:
        ident = (r.backend, r.precision, repr(sorted(r.options.items())))
        if r.size_bytes and ident not in seen:
            seen.add(ident)
            unique.append(r)
    groups = _groups(unique, lambda r: Bar(r.precision, r.precision, float(r.size_bytes), size(r.size_bytes),
                                           f"{r.label}: {size(r.size_bytes)}"))
    if not groups:
        return None
    return _chart(groups, title, "size", "size on disk (PyTorch: its weights)")
