"""The report's "Accuracy budget" section: each searched INT8 row (`bench --budget`) and each debug run of a
row that missed (`bench --debug-misses`), one line per artifact, with the page to open where there is one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelport.harness.report import fmt
from modelport.harness.report.aggregate import ReportRow

FIGURES = {"cos": "cos {:.5f}", "sqnr": "SQNR {:.1f} dB", "drop": "drop {:.2f}"}


def _figures(figures: Mapping[str, float | None]) -> str:
    return ", ".join(FIGURES[k].format(v) for k, v in figures.items() if v is not None and k in FIGURES)


def _kept_in(tune: Mapping[str, Any]) -> str:
    kept_in = tune.get("kept_in", "fp32")
    return "in float" if kept_in == "fp32" else f"out of INT8 in {kept_in.upper()}"


def _search_text(r: ReportRow) -> str:
    t = r.tune or {}
    kept = t.get("kept_in_float") or []
    text = (f"{r.backend} {r.precision}: {t.get('budget')} {t.get('status')}, "
            + (f"{len(kept)} node(s) kept {_kept_in(t)} ({', '.join(kept)})" if kept else "no node kept in float")
            + f", {_figures(t.get('figures') or {})} on the search's held-out samples; "
            f"{t.get('candidates')} candidate(s) in {fmt.num(t.get('seconds'), 1)} s")
    if kept and t.get("latency_ms") and t.get("full_int8_latency_ms"):
        text += (f"; {fmt.ms(t['latency_ms'])} ms a run against {fmt.ms(t['full_int8_latency_ms'])} ms for full "
                 "INT8 (the search's own interleaved timing)")
    return text


def budget_lines(report: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(text, link) per artifact that was searched or debugged: the link is its debug.html, or None."""
    lines: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for r in (ReportRow.from_json(row) for row in report["rows"]):
        missed = r.meets_budget is False and r.debug_html is not None  # a debug run of a row that missed
        if r.path is None or r.path in seen or (r.tune is None and not missed):
            continue
        seen.add(r.path)
        text = _search_text(r) if r.tune is not None else f"{r.backend} {r.precision}: misses the budget"
        if r.debug_html is not None:
            text += "; where it diverges, layer by layer"
        lines.append((text, r.debug_html))
    return lines
