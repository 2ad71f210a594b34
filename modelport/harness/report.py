"""Reports rendered from DIR/results.jsonl alone: a rich table, report.md, report.json and report.html.

Scope: the rows of the latest run's model and evaluation set (rows of earlier runs with the same
model and data are included; for the same backend, precision, options, batch and threads the latest
row wins). Plan items with no row are shown as `not measured` (an interrupted run).

The budget decides which rows may be recommended:
- with a task metric (labelled evaluation data): the row's metric may fall at most `max_drop` below
  PyTorch FP32's (default 1 point: one percentage point of top-1 accuracy);
- without one: SQNR against PyTorch FP32 of at least `min_sqnr` dB (default 20 dB: noise at 1% of the
  signal's power) and mean per-sample cosine similarity of at least `min_cosine` (default 0.99), on the
  worst output;
- outputs holding NaN or Inf never pass.
The recommendation, per batch size and thread count, is the row with the lowest p50 latency that
passes. The Pareto front is the set of rows that no other row beats on both p50 latency and fidelity
(the task metric, else SQNR).
"""

from __future__ import annotations

import contextlib
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelport.errors import BadInput, os_error
from modelport.harness import results
from modelport.harness.latency import speedup
from modelport.staging import ensure_dir

PYTORCH = "pytorch"
BUSY_LOAD = 0.5  # a load average above this share of the cores makes latencies noisy
ORDER = {"ok": 0, "failed": 1, "not measured": 2, "skipped": 3, "unavailable": 4}


@dataclass(frozen=True)
class Budget:
    """How much fidelity a recommended row may give up against PyTorch FP32."""

    max_drop: float = 1.0
    min_sqnr: float = 20.0
    min_cosine: float = 0.99

    def __post_init__(self) -> None:
        if self.max_drop < 0:
            raise BadInput(f"--max-drop must be zero or positive, not {self.max_drop}.")
        if not -1 <= self.min_cosine <= 1:
            raise BadInput(f"--min-cosine must be between -1 and 1, not {self.min_cosine}.")


# ---- the report's data ---------------------------------------------------------------------------------


def _identity(row: Mapping[str, Any]) -> str:
    return json.dumps([row["backend"], row["precision"], row.get("options"), row["batch"], row["threads"]],
                      sort_keys=True, default=str)


def _flat(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a table shows, flattened from one results.jsonl row."""
    lat = row.get("latency") or {}
    fid = row.get("fidelity") or {}
    summary = fid.get("summary") or {}
    metric = fid.get("metric") or {}
    art = row.get("artifact") or {}
    return {
        "key": row["key"], "backend": row["backend"], "title": row.get("title", row["backend"]),
        "precision": row["precision"], "options": row.get("options") or {}, "batch": row["batch"],
        "threads": row["threads"], "status": row["status"], "stage": row.get("stage"), "reason": row.get("reason"),
        "p50_ms": lat.get("p50_ms"), "p90_ms": lat.get("p90_ms"), "p99_ms": lat.get("p99_ms"),
        "mean_ms": lat.get("mean_ms"), "std_ms": lat.get("std_ms"), "throughput": lat.get("throughput"),
        "iterations": lat.get("iterations"), "peak_rss_bytes": lat.get("peak_rss_bytes"),
        "runner_rss_bytes": lat.get("runner_rss_bytes"), "round_ms": lat.get("round_ms"),
        "metric_name": metric.get("name"), "metric": metric.get("value"), "metric_delta": metric.get("delta"),
        "top1_agreement": summary.get("top1_agreement"), "cosine": summary.get("cosine"),
        "sqnr_db": summary.get("sqnr_db"), "max_abs": summary.get("max_abs"), "identical": summary.get("identical"),
        "nonfinite": summary.get("nonfinite"), "has_fidelity": bool(summary),
        "size_bytes": art.get("size_bytes"), "build_seconds": art.get("build_seconds"),
        "path": art.get("path"), "time": row.get("time"),
    }


def meets_budget(row: Mapping[str, Any], budget: Budget, with_metric: bool) -> bool | None:
    """Whether a flattened row's fidelity is within budget; None when it has no fidelity to judge."""
    if not row["has_fidelity"]:
        return None
    if row["nonfinite"]:
        return False
    if with_metric:
        return row["metric_delta"] is not None and row["metric_delta"] >= -budget.max_drop - 1e-9
    if row["identical"]:
        return True
    return (row["sqnr_db"] is not None and row["sqnr_db"] >= budget.min_sqnr
            and row["cosine"] is not None and row["cosine"] >= budget.min_cosine)


def fidelity_score(row: Mapping[str, Any], with_metric: bool) -> float | None:
    """The y of the scatter plot and of the Pareto front: the task metric, else SQNR (identical = +inf)."""
    if not row["has_fidelity"] or row["nonfinite"]:
        return None
    if with_metric:
        return row["metric"]
    return math.inf if row["identical"] else row["sqnr_db"]


def pareto_keys(rows: Sequence[Mapping[str, Any]], with_metric: bool) -> set[str]:
    """Rows that no other row beats on both latency (lower) and fidelity (higher)."""
    points = [(r["p50_ms"], fidelity_score(r, with_metric), r["key"]) for r in rows
              if r["status"] == "ok" and r["p50_ms"] is not None and fidelity_score(r, with_metric) is not None]
    front = set()
    for lat, score, key in points:
        dominated = any(lat2 <= lat and score2 >= score and (lat2 < lat or score2 > score)
                        for lat2, score2, _ in points)
        if not dominated:
            front.add(key)
    return front


def _groups(rows: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    return sorted({(r["batch"], r["threads"]) for r in rows})


def _describe(row: Mapping[str, Any]) -> str:
    return f"{row['title']} {row['precision']}" if row["backend"] != PYTORCH else "PyTorch FP32"


def recommend(rows: Sequence[Mapping[str, Any]], budget: Budget, metric: Mapping[str, Any] | None,
              batch: int, threads: int) -> dict[str, Any]:
    """The fastest row within budget at one batch size and thread count, as one line of text."""
    group = [r for r in rows if r["batch"] == batch and r["threads"] == threads and r["status"] == "ok"
             and r["p50_ms"] is not None]
    where = f"batch {batch}, {threads} thread{'s' if threads != 1 else ''}"
    passing = sorted((r for r in group if r["meets_budget"]), key=lambda r: r["p50_ms"])
    if metric is not None:
        budget_text = (f"at most {budget.max_drop:g} {_points(metric, budget.max_drop)} below PyTorch FP32's "
                       f"{metric['name']}")
    else:
        budget_text = f"SQNR >= {budget.min_sqnr:g} dB and cosine >= {budget.min_cosine:g} against PyTorch FP32"
    if not passing:
        text = f"At {where}: no measured row meets the budget ({budget_text})."
        return {"batch": batch, "threads": threads, "key": None, "text": text}
    best = passing[0]
    parts = [f"p50 {_ms(best['p50_ms'])} ms"]
    if best["backend"] != PYTORCH and best.get("speedup"):
        parts.append(f"{best['speedup']:.1f}x PyTorch FP32")
    if metric is not None and best["metric"] is not None:
        parts.append(f"{metric['name']} {_num(best['metric'])} ({_signed(best['metric_delta'])} {_points(metric)})")
    elif best["identical"]:
        parts.append("outputs identical to PyTorch")
    else:
        parts.append(f"SQNR {_num(best['sqnr_db'])} dB, cosine {best['cosine']:.4f}")
    text = f"At {where}, ship {_describe(best)}: {', '.join(parts)}; the fastest of {len(passing)} within budget " \
           f"({budget_text})."
    return {"batch": batch, "threads": threads, "key": best["key"], "text": text}


def _points(metric: Mapping[str, Any], amount: float | None = None) -> str:
    unit = "point" if metric.get("units") == "percentage points" else metric.get("units", "units")
    return unit + ("s" if unit == "point" and amount != 1 else "")


def build_report(out: Path, budget: Budget | None = None) -> dict[str, Any]:
    """Everything the renderers show, from DIR/results.jsonl alone."""
    budget = budget or Budget()
    records = list(results.read(out / results.RESULTS))
    runs = [r for r in records if r["type"] == "run"]
    if not runs:
        raise BadInput(f"{out / results.RESULTS} holds no bench run.", hint="Run `modelport bench MODEL -o DIR` first.")
    last = runs[-1]
    model_hash = last["model"]["content_hash"]
    eval_fp = (last.get("data") or {}).get("evaluation", {}).get("fingerprint")
    scoped_runs = [r for r in runs if r["model"]["content_hash"] == model_hash
                   and (r.get("data") or {}).get("evaluation", {}).get("fingerprint") == eval_fp]
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["type"] == "row" and r["model"]["content_hash"] == model_hash \
                and (r.get("evaluation") or {}).get("fingerprint") == eval_fp:
            latest[_identity(r)] = r
    rows = [_flat(r) for r in latest.values()]
    seen = {r["key"] for r in rows} | {(r["backend"], r["precision"], r["batch"], r["threads"]) for r in rows}
    for run in scoped_runs:
        threads = run["settings"]["threads"]
        for item in run["plan"]:
            ident = (item["backend"], item["precision"], item["batch"], threads)
            if item["key"] not in seen and ident not in seen:
                seen |= {item["key"], ident}
                rows.append(_flat({"key": item["key"], "backend": item["backend"], "precision": item["precision"],
                                   "batch": item["batch"], "threads": threads,
                                   "status": "not measured" if item["status"] == "planned" else item["status"],
                                   "reason": item.get("reason") or "the run stopped before measuring it"}))
    metric = last.get("reference_metric")
    with_metric = metric is not None
    baselines = {(r["batch"], r["threads"]): r for r in rows if r["backend"] == PYTORCH and r["status"] == "ok"}
    for r in rows:
        base = baselines.get((r["batch"], r["threads"]))
        r["speedup"] = speedup(base, r) if base else None
        r["meets_budget"] = meets_budget(r, budget, with_metric)
    front = set()
    for batch, threads in _groups(rows):
        front |= pareto_keys([r for r in rows if r["batch"] == batch and r["threads"] == threads], with_metric)
    for r in rows:
        r["pareto"] = r["key"] in front
    rows.sort(key=lambda r: (r["batch"], r["threads"], ORDER.get(r["status"], 9), r["backend"] != PYTORCH,
                             r["p50_ms"] if r["p50_ms"] is not None else math.inf, r["backend"], r["precision"]))
    recs = [recommend(rows, budget, metric, b, t) for b, t in _groups(r for r in rows if r["status"] == "ok")]
    warnings = []
    load, cores = last.get("load_average"), last["machine"].get("cores") or 0
    if load is not None and cores and load > BUSY_LOAD * cores:
        warnings.append(f"The machine was busy when the run started (1-minute load average {load:g} on {cores} "
                        "cores): other work competes with the runtimes' threads, so latencies, p99 most of all, "
                        "are noisy. Re-run on an idle machine, or with --threads 1, before trusting small differences.")
    return results.clean({
        "generated": datetime.now(UTC).isoformat(timespec="seconds"), "model": last["model"],
        "machine": last["machine"], "load_average": last.get("load_average"), "versions": last["versions"],
        "settings": last["settings"],
        "data": last.get("data"), "reference_metric": metric, "budget": asdict(budget),
        "runs": [r["run"] for r in scoped_runs], "rows": rows, "recommendations": recs, "warnings": warnings,
        "recommendation": recs[0]["text"] if recs else "No row was measured; nothing to recommend.",
    })


# ---- formatting ----------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}" if v >= 0.01 else f"{v:.4f}"


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _signed(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:+.{digits}f}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _rate(v: float | None) -> str:
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def _fidelity_text(r: Mapping[str, Any], short: bool = False) -> str:
    if not r["has_fidelity"]:
        return "-"
    if r["nonfinite"]:
        return f"{r['nonfinite']} NaN/Inf"
    if r["identical"]:
        return "exact" if short else "identical"
    return _num(r["sqnr_db"], 1) + ("" if short else " dB")


def _join(values: list[str], new: str) -> list[str]:
    return values if new in values else [*values, new]


def display_rows(report: Mapping[str, Any], short: bool = False) -> list[dict[str, str]]:
    """Table cells as text; unavailable and skipped rows with the same reason share one line.

    `short` is for terminals: backend names instead of titles, terser fidelity cells.
    """
    metric = report.get("reference_metric")
    lines: list[dict[str, str]] = []
    merged: dict[tuple, tuple[dict[str, str], list[str], list[str]]] = {}
    for r in report["rows"]:
        note = r["reason"] or ""
        group = (r["backend"], r["status"], note, r["threads"])
        if r["status"] in ("unavailable", "skipped") and group in merged:
            cells, precisions, batches = merged[group]
            precisions[:] = _join(precisions, r["precision"])
            batches[:] = _join(batches, str(r["batch"]))
            cells["precision"], cells["batch"] = ",".join(precisions), ",".join(batches)
            continue
        flags = (" *" if r["pareto"] else "") + (" ✓" if r["meets_budget"] else "")
        cells = {
            "backend": r["backend"] if short else r["title"], "precision": r["precision"], "batch": str(r["batch"]),
            "threads": str(r["threads"]), "status": r["status"] + (f" ({r['stage']})" if r.get("stage") else ""),
            "p50 ms": _ms(r["p50_ms"]), "p90 ms": _ms(r["p90_ms"]), "p99 ms": _ms(r["p99_ms"]),
            "samples/s": _rate(r["throughput"]),
            "speedup": "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
        }
        if metric is not None:
            template = "{} {}" if short else "{} ({})"
            cells[metric["name"]] = "-" if r["metric"] is None else \
                template.format(_num(r["metric"]), _signed(r["metric_delta"]))
        cells.update({
            "top-1 agree": "-" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%",
            "cosine": "-" if r["cosine"] is None else f"{r['cosine']:.5f}", "SQNR": _fidelity_text(r, short),
            "max abs err": "-" if r["max_abs"] is None else f"{r['max_abs']:.2e}",
            "size": _bytes(r["size_bytes"]), "build s": _num(r["build_seconds"], 1),
            "runner mem": _bytes(r["runner_rss_bytes"]), "flags": flags.strip(), "note": note,
        })
        lines.append(cells)
        if r["status"] in ("unavailable", "skipped"):
            merged[group] = (cells, [r["precision"]], [str(r["batch"])])
    return lines


def _header_lines(report: Mapping[str, Any]) -> list[str]:
    m, machine, s = report["model"], report["machine"], report["settings"]
    data = report.get("data") or {}
    ev = data.get("evaluation") or {}
    cal = data.get("calibration")
    protocol = (f"{s['iterations']} timed runs" if s.get("iterations") else f"{s['duration']:g} s of timed runs") + \
        f" after {s['warmup']} warm-up runs, {s['threads']} thread(s), each in its own process" + \
        (f", the rows of each batch size taking turns over {s['rounds']} rounds" if s.get("rounds", 1) > 1 else "")
    lines = [
        f"Model: {m['name']} ({m['origin']}, content hash {m['content_hash']}); inputs {' '.join(m['inputs'])}",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, flags {' '.join(machine['flags']) or '-'}; "
        f"{machine['os']}; Python {machine['python']}"
        + (f"; load average {report['load_average']:g} at the start" if report.get("load_average") is not None
           else ""),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"Evaluation: {ev.get('samples')} samples from {ev.get('source')} "
        f"({'labelled' if ev.get('labels') else 'no labels'}, fingerprint {ev.get('fingerprint')})",
        "Calibration: " + (f"{cal['samples']} samples from {cal['source']} (fingerprint {cal['fingerprint']})"
                           if cal else "none"),
        f"Latency: {protocol}",
    ]
    metric = report.get("reference_metric")
    if metric:
        lines.append(f"PyTorch FP32 {metric['name']}: {_num(metric['value'])}")
    return lines


FOOTNOTE = ("* on the Pareto front (no other row is both faster and more faithful); ✓ within the budget. Speedup "
            "is PyTorch FP32's p50 over the row's at the same batch size and thread count. Runner mem is what the "
            "measuring process grew by loading and running the runner (peak RSS minus RSS before loading).")


# ---- Markdown ------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Mapping[str, Any]) -> str:
    rows = display_rows(report)
    out = [f"# modelport bench: {_md_cell(report['model']['name'])}", ""]
    out += [f"- {_md_cell(line)}" for line in _header_lines(report)]
    out += [f"- **Warning:** {_md_cell(w)}" for w in report.get("warnings", [])]
    out += ["", "## Recommendation", ""] + [f"- {_md_cell(r['text'])}" for r in report["recommendations"]]
    if not report["recommendations"]:
        out.append(f"- {report['recommendation']}")
    out += ["", "## Results", ""]
    if rows:
        cols = list(rows[0])
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        out += ["| " + " | ".join(_md_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    out += ["", FOOTNOTE, ""]
    return "\n".join(out)


# ---- HTML ----------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
td.text { text-align: left; }
td.note { text-align: left; white-space: normal; max-width: 32em; color: #555; }
tr.ok td { background: #fff; }
tr.failed td { background: #fff0f0; }
tr.skipped td, tr.unavailable td, tr.not-measured td { color: #888; }
p.warn { background: #fff6e0; padding: 0.5em; border-left: 4px solid #e90; }
p.rec { font-size: 15px; background: #eef7ee; padding: 0.5em; border-left: 4px solid #3a3; }
ul.meta { color: #444; font-size: 13px; }
svg text { font-size: 11px; fill: #333; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


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


def scatter_svg(rows: Sequence[Mapping[str, Any]], with_metric: bool, title: str, y_label: str,
                recommended: str | None = None) -> str:
    """Latency (x) against fidelity (y): the Pareto front filled and joined, the recommended row ringed.

    Every point has a tooltip; labels are placed where they fit (front and recommendation first).
    """
    pts = [(r, r["p50_ms"], fidelity_score(r, with_metric)) for r in rows
           if r["status"] == "ok" and r["p50_ms"] and fidelity_score(r, with_metric) is not None]
    width, height, left, right, top, bottom = 760, 400, 64, 16, 44, 44
    pw, ph = width - left - right, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{left}" y="16" font-weight="bold">{_e(title)}</text>']
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
                 f'{_e(y_label)}: higher is better</text>')
    front = sorted((x, y) for (r, x, _), y in zip(pts, ys, strict=True) if r["pareto"])
    if len(front) > 1:
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#3a3" stroke-width="1.5" '
                     'stroke-dasharray="4 3"/>')
    labels = []
    for (r, x, y), py in zip(pts, ys, strict=True):
        fill = "#3a3" if r["pareto"] else "#fff"
        stroke = "#1a1" if r["pareto"] else ("#36c" if r["meets_budget"] else "#c33")
        name = _describe(r)
        shown = "identical to PyTorch" if not math.isfinite(y) else f"{y:.2f}"
        if r["key"] == recommended:
            parts.append(f'<circle cx="{fx(x):.1f}" cy="{fy(py):.1f}" r="9" fill="none" stroke="#000" '
                         'stroke-width="1.5"/>')
        parts.append(f'<circle cx="{fx(x):.1f}" cy="{fy(py):.1f}" r="5" fill="{fill}" stroke="{stroke}" '
                     f'stroke-width="2"><title>{_e(name)}: p50 {_ms(x)} ms, {_e(y_label)} {shown}</title></circle>')
        priority = 0 if r["key"] == recommended else 1 if r["pareto"] else 2
        labels.append((fx(x), fy(py), name, priority))
    for x, y, text, anchor in _place_labels(labels, (left, top, left + pw, top + ph)):
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{_e(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: no scripts, no external styles or fonts, valid as XML too."""
    metric = report.get("reference_metric")
    with_metric = metric is not None
    y_label = metric["name"] if metric else "SQNR vs PyTorch FP32, dB"
    name = report["model"]["name"]
    body = [f"<h1>modelport bench: {_e(name)}</h1>", '<ul class="meta">']
    body += [f"<li>{_e(line)}</li>" for line in _header_lines(report)]
    body.append("</ul>")
    body += [f'<p class="warn">{_e(w)}</p>' for w in report.get("warnings", [])]
    recs = report["recommendations"] or [{"text": report["recommendation"]}]
    body += [f'<p class="rec">{_e(r["text"])}</p>' for r in recs]
    for batch, threads in _groups(report["rows"]):
        group = [r for r in report["rows"] if r["batch"] == batch and r["threads"] == threads]
        rec = next((r["key"] for r in report["recommendations"] if (r["batch"], r["threads"]) == (batch, threads)),
                   None)
        if any(r["status"] == "ok" for r in group):
            body.append(scatter_svg(group, with_metric, f"Batch {batch}, {threads} thread(s)", y_label, rec))
    rows = display_rows(report)
    if rows:
        cols = list(rows[0])
        body.append("<table><thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead><tbody>")
        for r in rows:
            status = r["status"].split(" ")[0] if not r["status"].startswith("not measured") else "not-measured"
            cells = []
            for c in cols:
                cls = ' class="note"' if c == "note" else (' class="text"' if c in ("backend", "precision", "status")
                                                           else "")
                cells.append(f"<td{cls}>{_e(r.get(c, ''))}</td>")
            body.append(f'<tr class="{_e(status)}">' + "".join(cells) + "</tr>")
        body.append("</tbody></table>")
    body.append(f"<p>{_e(FOOTNOTE)} Generated {_e(report['generated'])} from results.jsonl.</p>")
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"/><title>modelport bench: {_e(name)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---- terminal and files --------------------------------------------------------------------------------

def _terminal_columns(report: Mapping[str, Any], width: int) -> list[tuple[str, str]]:
    """(cell key, header) pairs that fit `width`: the least essential columns go first on narrow terminals."""
    metric = report.get("reference_metric")
    single_batch = len({r["batch"] for r in report["rows"]}) == 1
    columns = [("backend", "backend"), ("precision", "precision"), ("batch", "batch"), ("status", "status"),
               ("p50 ms", "p50 ms"), ("p99 ms", "p99 ms"), ("speedup", "speedup")]
    if metric:
        header = "accuracy %" if metric["name"] == "top1_accuracy" else metric["name"]
        columns.append((metric["name"], f"{header} (Δ)"))
    columns += [("SQNR", "SQNR dB"), ("top-1 agree", "top-1 agree"), ("size", "size"), ("flags", "")]
    drop: set[str] = {"batch"} if single_batch else set()
    if width < 120:
        drop |= {"p99 ms", "top-1 agree", "size"}
    if width < 100 and metric:
        drop.add("SQNR")
    return [(k, h) for k, h in columns if k not in drop]


def render_terminal(report: Mapping[str, Any], console: Any) -> None:
    """The table (fewer columns on a narrow terminal), the reasons under it, then the recommendation."""
    from rich import box
    from rich.table import Table

    batches = sorted({r["batch"] for r in report["rows"]})
    title = f"modelport bench: {report['model']['name']}" + (f", batch {batches[0]}" if len(batches) == 1 else "")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = _terminal_columns(report, console.width)
    for key, header in columns:
        table.add_column(header, justify="left" if key in ("backend", "precision", "status") else "right",
                         no_wrap=True)
    style = {"ok": "", "failed": "red"}
    notes = []
    for r in display_rows(report, short=True):
        if r["note"]:
            notes.append(f"{r['backend']} {r['precision']} (batch {r['batch']}): {r['status']}: {r['note']}")
        if r["status"].startswith(("ok", "failed")):  # the rest are only their note
            table.add_row(*(r.get(k, "") for k, _ in columns), style=style.get(r["status"].split(" ")[0], ""))
    console.print(table, highlight=False, markup=False)
    for note in notes:
        console.print(note, style="dim", highlight=False, markup=False)
    console.print("* on the Pareto front (no other row is both faster and more faithful)  ✓ within the budget",
                  style="dim", highlight=False, markup=False)
    for warning in report.get("warnings", []):
        console.print(warning, style="yellow", highlight=False, markup=False)
    for rec in report["recommendations"] or [{"text": report["recommendation"]}]:
        console.print(rec["text"], style="bold green", highlight=False, markup=False)


def write_reports(report: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """report.json, report.md and report.html in `out`, each written whole or not at all."""
    if out.is_file():
        raise BadInput(f"-o {str(out)!r} is a file; the reports are written into a directory "
                       "(report.json, report.md, report.html).", hint="Name a directory with -o.")
    ensure_dir(out)
    files = {"json": out / "report.json", "markdown": out / "report.md", "html": out / "report.html"}
    texts = {"json": json.dumps(report, indent=2, allow_nan=False) + "\n", "markdown": render_markdown(report),
             "html": render_html(report)}
    for kind, path in files.items():
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(texts[kind], encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise os_error(exc, path) from exc
    return files
