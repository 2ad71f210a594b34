"""`modelport bench ... --ship DIR`: the recommended artifact copied to DIR with a SHIP.md saying why it won.

The winner is the fastest measured row of any runtime whose artifact meets the budget, at the report's first
batch size and thread count (the one its first recommendation is for); PyTorch itself and custom runners have
no artifact to ship. DIR is written whole or not at all: the copy lands in a sibling (modelport/staging.py) and
is renamed into place; when no row meets the budget nothing is written and the bench exits 1.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelport.artifact import MANIFEST
from modelport.errors import BadInput, StepFailed, os_error
from modelport.harness.report import fmt
from modelport.harness.report.aggregate import ReportRow
from modelport.staging import ensure_dir, make_sibling_dir, remove_stale, sibling_path

SHIP = "SHIP.md"


def pick(report: Mapping[str, Any]) -> tuple[ReportRow, list[ReportRow]]:
    """The winning row and the rows it was chosen from (its batch size and thread count); StepFailed if none meets."""
    rows = [ReportRow.from_json(r) for r in report["rows"]]
    recs = report["recommendations"]
    if not recs:
        raise StepFailed("--ship: no row was measured, so there is nothing to ship.")
    batch, threads = recs[0]["batch"], recs[0]["threads"]
    group = [r for r in rows if r.batch == batch and r.threads == threads and r.status == "ok" and r.p50_ms]
    shippable = [r for r in group if r.meets_budget and r.path is not None and not r.is_baseline]
    if not shippable:
        budget = report["budget"].get("expr") or "the budget"
        best = max((r for r in group if r.path), key=lambda r: r.cosine or -1, default=None)
        closest = (f" The closest artifact, {best.label}, reaches cos {fmt.num(best.cosine, 5)}, SQNR "
                   f"{fmt.num(best.sqnr_db, 1)} dB." if best is not None else "")
        raise StepFailed(f"--ship: no artifact meets {budget} at batch {batch}, {threads} thread(s); nothing was "
                         f"written.{closest}",
                         hint="Loosen --budget, give the search more --max-candidates, or add --debug-misses to "
                              "see which layers lose the accuracy.")
    return min(shippable, key=lambda r: r.p50_ms or float("inf")), group


def ship(report: Mapping[str, Any], run_dir: Path, dest: Path) -> tuple[ReportRow, Path]:
    """Copy the winning artifact from `run_dir` to `dest` with its manifest and SHIP.md; the row and `dest`."""
    winner, group = pick(report)
    assert winner.path is not None
    _refuse(dest)
    ensure_dir(dest.parent, dest)
    tmp = make_sibling_dir(dest, "shipping")
    try:
        shutil.copytree(run_dir / winner.path, tmp, dirs_exist_ok=True)
        (tmp / SHIP).write_text(ship_md(report, winner, group), encoding="utf-8")
        _swap(tmp, dest)
    except OSError as exc:
        raise os_error(exc, dest, "shipping to") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return winner, dest


def _refuse(dest: Path) -> None:
    """Only a new or empty DIR, or one an earlier --ship wrote, is replaced."""
    if dest.is_file():
        raise BadInput(f"--ship {str(dest)!r} is a file.", hint="Name a directory.")
    if dest.is_dir() and any(dest.iterdir()) and not ((dest / SHIP).is_file() and (dest / MANIFEST).is_file()):
        raise BadInput(f"--ship {str(dest)!r} is a non-empty directory that an earlier --ship did not write.",
                       hint="Name a new or empty directory; modelport does not overwrite other files.")


def _swap(tmp: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        remove_stale(dest, "old")
        old = sibling_path(dest, "old")
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fidelity(r: ReportRow) -> str:
    parts = [f"{r.metric_name} {fmt.num(r.metric)} ({fmt.signed(r.metric_delta)})"] if r.metric is not None else []
    parts.append("identical to PyTorch" if r.identical else
                 f"cos {fmt.num(r.cosine, 5)}, SQNR {fmt.num(r.sqnr_db, 1)} dB")
    return ", ".join(parts)


def ship_md(report: Mapping[str, Any], winner: ReportRow, group: Sequence[ReportRow]) -> str:
    """Why this artifact: the budget, its figures, and its latency against every other row measured beside it."""
    budget = report["budget"]
    stated = budget.get("expr") or (f"drop<={budget['max_drop']:g}" if report.get("reference_metric") else
                                    f"sqnr>={budget['min_sqnr']:g}, cos>={budget['min_cosine']:g}")
    machine = report["machine"]
    samples = ((report.get("data") or {}).get("evaluation") or {}).get("samples")
    lines = [f"# Ship {winner.label} of {report['model']['name']}", "",
             f"The fastest of {sum(bool(r.meets_budget) for r in group if r.path)} artifact(s) within the budget "
             f"**{stated}** (against PyTorch FP32, on {samples} "
             f"held-out samples), at batch {winner.batch} with {winner.threads} thread(s) on {machine['cpu']} "
             f"({machine['cores']} cores).", "",
             f"- p50 {fmt.ms(winner.p50_ms)} ms"
             + (f", {winner.speedup:.2f}x PyTorch FP32" if winner.speedup else ""),
             f"- fidelity: {_fidelity(winner)}", f"- size: {fmt.size(winner.size_bytes)}"]
    if winner.tune:
        kept = winner.tune.get("kept_in_float") or []
        lines.append(f"- budget search: {winner.tune['status']}, {len(kept)} node(s) kept in float"
                     + (f" ({', '.join(kept)})" if kept else "") + f", {winner.tune['candidates']} candidate(s)")
    lines += ["", "Every row measured beside it:", "", "| row | p50 ms | p50 vs shipped | fidelity | within budget |",
              "|---|---|---|---|---|"]
    for r in sorted(group, key=lambda r: r.p50_ms or float("inf")):
        ratio = f"{r.p50_ms / winner.p50_ms:.2f}x" if r.p50_ms and winner.p50_ms else "-"
        mark = "shipped" if r.key == winner.key else ("yes" if r.meets_budget else "no")
        cells = (r.label, fmt.ms(r.p50_ms), ratio, _fidelity(r), mark)
        lines.append("| " + " | ".join(fmt.md_cell(c) for c in cells) + " |")
    lines += ["", f"The artifact's own record is {MANIFEST}; load it with `modelport.load(DIR)` (numpy and its "
                  "runtime only).", ""]
    return "\n".join(lines)
