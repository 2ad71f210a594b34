"""The tables `modelport compare` shows (harness/compare.py makes the data): Markdown for a pull-request
comment and the rich table for the terminal, both from the same cells."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelport.harness.compare import REGRESSIONS
from modelport.harness.report.fmt import md_cell, ms

COLUMNS = ("backend", "precision", "batch", "status", "p50 ms", "p50", "p99", "fidelity", "size", "note")
FOOTNOTE = ("▲/▼: the number rose/fell (latency ▲ and fidelity ▼ are worse). A p50 change inside the runs' own "
            "noise band (both runs' p90 − p50 combined) is `same` and carries no mark; p99 and size are reported, "
            "not judged.")
_MIN_MARKED = 0.005  # p99 and size changes under 0.5% carry no mark


def _pct(change: float | None, marked: bool) -> str:
    if change is None:
        return "-"
    mark = ("▲ " if change > 0 else "▼ " if change < 0 else "") if marked else ""
    return f"{mark}{change:+.1%}"


def _fidelity(change: Mapping[str, float | None] | None) -> str:
    """The task metric's change where there is one, else SQNR's."""
    if not change:
        return "-"
    for key, unit, digits in (("metric", " pts", 2), ("sqnr_db", " dB", 1)):
        value = change.get(key)
        if value is not None:
            mark = "▲ " if value > 0 else "▼ " if value < 0 else ""
            return f"{mark}{value:+.{digits}f}{unit}"
    return "="


def cells(row: Mapping[str, Any]) -> dict[str, str]:
    """One compared row as the text of each column."""
    judged = row["status"] in ("slower", "faster", "regressed")
    p50 = "-" if row["base_p50_ms"] is None and row["new_p50_ms"] is None else \
        f"{ms(row['base_p50_ms'])} → {ms(row['new_p50_ms'])}"
    p99, size = (row[k] for k in ("p99_change", "size_change"))
    backend = (row["title"] or row["backend"]) + (f" on {row['device']}" if row.get("device") else "")
    return {"backend": backend, "precision": row["precision"], "batch": str(row["batch"]),
            "status": row["status"], "p50 ms": p50, "p50": _pct(row["p50_change"], judged),
            "p99": _pct(p99, p99 is not None and abs(p99) >= _MIN_MARKED),
            "fidelity": _fidelity(row["fidelity_change"]),
            "size": _pct(size, size is not None and abs(size) >= _MIN_MARKED), "note": "; ".join(row["reasons"])}


def summary(data: Mapping[str, Any]) -> str:
    n = data["regressions"]
    th = data["thresholds"]
    verdict = f"{n} regression{'s' if n != 1 else ''}" if n else "No regression"
    return (f"{verdict} in {len(data['rows'])} rows (p50 slowdown over {th['max_slowdown']:.0%} outside the "
            f"noise, task metric drop over {th['max_fidelity_drop']:g} points, SQNR drop over "
            f"{th['max_sqnr_drop']:g} dB, or a row that failed).")


def render_compare_markdown(data: Mapping[str, Any]) -> str:
    """A pull-request comment: the verdict, the warnings, the table (regressions in bold), the footnote."""
    out = [f"## modelport compare: {md_cell(data['model'])}", "",
           f"**{md_cell(summary(data))}** BASE `{md_cell(data['base'])}`, NEW `{md_cell(data['new'])}`.", ""]
    out += [f"- **Warning:** {md_cell(w)}" for w in data["warnings"]]
    out += [""] if data["warnings"] else []
    out += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in data["rows"]:
        text = cells(row)
        if row["status"] in REGRESSIONS:
            text["status"] = f"**{text['status']}**"
        out.append("| " + " | ".join(md_cell(text[c]) for c in COLUMNS) + " |")
    out += ["", FOOTNOTE, ""]
    return "\n".join(out)


def render_compare_terminal(data: Mapping[str, Any], console: Any) -> None:
    """The rich table (its notes under it), regressions in red and gains in green, then warnings and verdict."""
    from rich import box
    from rich.table import Table

    batches = sorted({r["batch"] for r in data["rows"]})
    title = f"modelport compare: {data['model']}" + (f", batch {batches[0]}" if len(batches) == 1 else "")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    # notes go under the table; the least essential columns go first on narrow terminals
    drop = {"note"} | ({"batch"} if len(batches) == 1 else set()) | ({"p50 ms"} if console.width < 110 else set()) \
        | ({"size"} if console.width < 90 else set())
    columns = [c for c in COLUMNS if c not in drop]
    for column in columns:
        table.add_column(column, justify="left" if column in ("backend", "precision", "status") else "right",
                         no_wrap=True)
    style = {"regressed": "red", "failed": "red", "faster": "green"}
    notes = []
    for row in data["rows"]:
        text = {**cells(row), "backend": row["backend"]}
        table.add_row(*(text[c] for c in columns), style=style.get(row["status"], ""))
        if text["note"]:
            notes.append((f"{row['backend']} {row['precision']} (batch {row['batch']}): {text['note']}",
                          style.get(row["status"], "dim")))
    console.print(table, highlight=False, markup=False)
    for note, note_style in notes:
        console.print(note, style=note_style, highlight=False, markup=False)
    console.print(FOOTNOTE, style="dim", highlight=False, markup=False)
    for warning in data["warnings"]:
        console.print(warning, style="yellow", highlight=False, markup=False)
    console.print(summary(data), style="bold red" if data["regressions"] else "bold green", highlight=False,
                  markup=False)
