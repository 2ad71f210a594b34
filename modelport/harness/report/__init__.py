"""Reports rendered from DIR/results.jsonl alone: a rich table, report.md, report.json and report.html.

`aggregate.py` turns rows into the report data (plain JSON: what report.json holds), `budget.py` says
which rows may be recommended and recommends one; each renderer reads the report data only:
`cells.py` (the text every table shows), `markdown.py`, `html.py` (with `svg.py`, the SVG pieces and the
Pareto plot, and `bars.py`, the latency and size charts) and `terminal.py`, each with `searched.py`'s
budget-search section; `comparison.py` renders `modelport compare`'s data (harness/compare.py). A new file
format is one module with a `render_X(report) -> str` and one line in FORMATS.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modelport.errors import BadInput, os_error
from modelport.harness.report.aggregate import build_report
from modelport.harness.report.budget import Budget
from modelport.harness.report.html import render_html
from modelport.harness.report.markdown import render_markdown
from modelport.harness.report.terminal import render_terminal
from modelport.staging import ensure_dir


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


# format -> (file name, renderer): what write_reports writes
FORMATS: dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    "json": ("report.json", render_json), "markdown": ("report.md", render_markdown),
    "html": ("report.html", render_html)}


def write_reports(report: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """Every file in FORMATS in `out`, each written whole or not at all."""
    if out.is_file():
        names = ", ".join(name for name, _ in FORMATS.values())
        raise BadInput(f"-o {str(out)!r} is a file; the reports are written into a directory ({names}).",
                       hint="Name a directory with -o.")
    ensure_dir(out)
    texts = {kind: render(report) for kind, (_, render) in FORMATS.items()}  # all rendered before any is written
    files = {kind: out / name for kind, (name, _) in FORMATS.items()}
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


__all__ = ["FORMATS", "Budget", "build_report", "render_html", "render_json", "render_markdown", "render_terminal",
           "write_reports"]
