"""The table `modelport bench` and `modelport report` print: rich, fewer columns on a narrow terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelport.harness.report.cells import display_rows
from modelport.harness.report.searched import budget_lines


def _terminal_columns(report: Mapping[str, Any], width: int) -> list[tuple[str, str]]:
    """(cell key, header) pairs that fit `width`: the least essential columns go first on narrow terminals."""
    metric = report.get("reference_metric")
    single_batch = len({r["batch"] for r in report["rows"]}) == 1
    devices = [("device", "device")] if any(r.get("device") for r in report["rows"]) else []
    columns = [("backend", "backend"), *devices, ("precision", "precision"), ("batch", "batch"), ("status", "status"),
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
        table.add_column(header, justify="left" if key in ("backend", "device", "precision", "status") else "right",
                         no_wrap=True)
    style = {"ok": "", "failed": "red"}
    notes = []
    for r in display_rows(report, short=True):
        if r["note"]:
            where = f"batch {r['batch']}" + (f", {r['device']}" if r.get("device") else "")
            notes.append(f"{r['backend']} {r['precision']} ({where}): {r['status']}: {r['note']}")
        if r["status"].startswith(("ok", "failed")):  # the rest are only their note
            table.add_row(*(r.get(k, "") for k, _ in columns), style=style.get(r["status"].split(" ")[0], ""))
    console.print(table, highlight=False, markup=False)
    for note in notes:
        console.print(note, style="dim", highlight=False, markup=False)
    console.print("* on the Pareto front (no other row is both faster and more faithful)  ✓ within the budget",
                  style="dim", highlight=False, markup=False)
    for text, link in budget_lines(report):
        console.print(text + (f": {link}" if link else ""), highlight=False, markup=False)
    for warning in report.get("warnings", []):
        console.print(warning, style="yellow", highlight=False, markup=False)
    for rec in report["recommendations"] or [{"text": report["recommendation"]}]:
        console.print(rec["text"], style="bold green", highlight=False, markup=False)
