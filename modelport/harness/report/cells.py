"""The report as text: table cells, the header lines and the footnote that every renderer shows alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelport.harness.report import fmt
from modelport.harness.report.aggregate import ReportRow

FOOTNOTE = ("* on the Pareto front (no other row is both faster and more faithful); ✓ within the budget. Speedup "
            "is PyTorch FP32's p50 over the row's at the same batch size and thread count. Runner mem is what the "
            "measuring process grew by loading and running the runner (peak RSS minus RSS before loading).")


LAYER_PLOT = "layer plot"  # the column of `modelport debug`'s page for the row's artifact, where there is one


def _fidelity_text(r: ReportRow, short: bool = False) -> str:
    if not r.has_fidelity:
        return "-"
    if r.nonfinite:
        return f"{r.nonfinite} NaN/Inf"
    if r.identical:
        return "exact" if short else "identical"
    return fmt.num(r.sqnr_db, 1) + ("" if short else " dB")


def _join(values: list[str], new: str) -> list[str]:
    return values if new in values else [*values, new]


def _build_budget_text(r: ReportRow) -> str:
    """The budget a row's build was held to (`build --budget`) and whether it met it."""
    verdict = {True: "met", False: "missed", None: ""}[r.build_budget_met]
    return ": ".join(part for part in (verdict, r.build_budget or "") if part) or "-"


def display_rows(report: Mapping[str, Any], short: bool = False) -> list[dict[str, str]]:
    """Table cells as text; unavailable and skipped rows with the same reason share one line.

    `short` is for terminals: backend names instead of titles, terser fidelity cells. A `build budget` column
    appears where some row's build was held to an accuracy budget, a `layer plot` one (the path of its
    debug.html) where `modelport debug` has been run on some row's artifact.
    """
    metric = report.get("reference_metric")
    report_rows = [ReportRow.from_json(r) for r in report["rows"]]
    with_budget = any(r.build_budget or r.build_budget_met is not None for r in report_rows)
    with_debug = any(r.debug_html for r in report_rows)
    on_devices = any(r.get("device") for r in report["rows"])
    lines: list[dict[str, str]] = []
    merged: dict[tuple, tuple[dict[str, str], list[str], list[str]]] = {}
    for r in report_rows:
        note = r.reason or ""
        group = (r.backend, r.status, note, r.threads, r.device)
        if r.status in ("unavailable", "skipped") and group in merged:
            cells, precisions, batches = merged[group]
            precisions[:] = _join(precisions, r.precision)
            batches[:] = _join(batches, str(r.batch))
            cells["precision"], cells["batch"] = ",".join(precisions), ",".join(batches)
            continue
        flags = (" *" if r.pareto else "") + (" ✓" if r.meets_budget else "")
        cells = {
            "backend": r.backend if short else r.title, **({"device": r.device or "-"} if on_devices else {}),
            "precision": r.precision, "batch": str(r.batch),
            "threads": str(r.threads), "status": r.status + (f" ({r.stage})" if r.stage else ""),
            "p50 ms": fmt.ms(r.p50_ms), "p90 ms": fmt.ms(r.p90_ms), "p99 ms": fmt.ms(r.p99_ms),
            "samples/s": fmt.rate(r.throughput),
            "speedup": "-" if r.speedup is None else f"{r.speedup:.2f}x",
        }
        if metric is not None:
            template = "{} {}" if short else "{} ({})"
            cells[metric["name"]] = "-" if r.metric is None else \
                template.format(fmt.num(r.metric), fmt.signed(r.metric_delta))
        cells.update({
            "top-1 agree": "-" if r.top1_agreement is None else f"{100 * r.top1_agreement:.1f}%",
            "cosine": "-" if r.cosine is None else f"{r.cosine:.5f}", "SQNR": _fidelity_text(r, short),
            "max abs err": "-" if r.max_abs is None else f"{r.max_abs:.2e}",
            "size": fmt.size(r.size_bytes), "build s": fmt.num(r.build_seconds, 1),
            "runner mem": fmt.size(r.runner_rss_bytes),
        })
        if with_budget:
            cells["build budget"] = _build_budget_text(r)
        if with_debug:
            cells[LAYER_PLOT] = r.debug_html or "-"
        cells.update({"flags": flags.strip(), "note": note})
        lines.append(cells)
        if r.status in ("unavailable", "skipped"):
            merged[group] = (cells, [r.precision], [str(r.batch)])
    return lines


def header_lines(report: Mapping[str, Any]) -> list[str]:
    """What was measured, on what, how: the model, machine, versions, data and latency protocol."""
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
        lines.append(f"PyTorch FP32 {metric['name']}: {fmt.num(metric['value'])}")
    return lines
