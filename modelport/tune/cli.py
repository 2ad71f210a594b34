"""`modelport build --budget EXPR`: the search behind the build command, and its table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.console import console, err_console, print_json
from modelport.tune.budget import Budget
from modelport.tune.search import search_closest


def build_to_budget(bundle: ModelBundle, backend: str, out: Path, budget: Budget, calibration: CalibrationSet,
                    evaluation: CalibrationSet | None, options: dict[str, Any], max_candidates: int,
                    json_out: bool, force: bool = False) -> None:
    """Run the search (or reuse the artifact an identical one wrote at `out`) and show every candidate and the
    choice (the table, or the record with --json)."""
    say = None if json_out else (lambda line: err_console.print(escape(line), style="dim"))
    outcome = search_closest(bundle, backend, out, budget, calibration, evaluation=evaluation, options=options,
                             max_candidates=max_candidates, report=say, force=force)
    record = outcome.record
    if outcome.reused:
        err_console.print(f"reused searched artifact (key {record['key']}) at {outcome.artifact.path}; --force "
                          "searches again", style="dim")
    if outcome.why_missed is not None:
        raise outcome.why_missed
    if json_out:
        print_json({"path": str(outcome.artifact.path), "tune": record})
        return
    table = Table(title=f"{backend} int8 within {record['budget']}: {len(record['candidates'])} candidates on "
                        f"{record['evaluation']['samples']} held-out samples ({record['seconds']:.1f} s)")
    for col in ("#", "kept out of INT8", "cos", "sqnr dB", "drop", "meets", "ms"):
        table.add_column(col)
    for i, c in enumerate(record["candidates"]):
        f = c["figures"]
        kept = ", ".join(c["kept_in_float"]) + (f" (in {c['kept_in'].upper()})" if c.get("kept_in", "fp32") != "fp32"
                                                 else "")
        table.add_row(f"{i}{' *' if i == record['chosen'] else ''}", escape(kept or "-"),
                      _num(f["cos"], 5), _num(f["sqnr"], 1), _num(f["drop"], 2), "yes" if c["met"] else "no",
                      _num(c["latency_ms"], 3))
    console.print(table)
    console.print(f"Wrote {outcome.artifact.path} (* the fastest that meets the budget; every candidate is in its "
                  "manifest under `tune`)", style="dim")
    if record.get("warning"):
        err_console.print(f"warning: {escape(record['warning'])}", style="yellow")


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
