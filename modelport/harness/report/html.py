"""report.html: one self-contained page (no scripts, no external styles or fonts, valid as XML too): the
header, the recommendations, one scatter plot per batch size and thread count (svg.py), the table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelport.harness.report.aggregate import ReportRow, groups
from modelport.harness.report.cells import FOOTNOTE, display_rows, header_lines
from modelport.harness.report.fmt import escape
from modelport.harness.report.searched import budget_lines
from modelport.harness.report.svg import scatter_svg

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


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: no scripts, no external styles or fonts, valid as XML too."""
    metric = report.get("reference_metric")
    with_metric = metric is not None
    y_label = metric["name"] if metric else "SQNR vs PyTorch FP32, dB"
    name = report["model"]["name"]
    body = [f"<h1>modelport bench: {escape(name)}</h1>", '<ul class="meta">']
    body += [f"<li>{escape(line)}</li>" for line in header_lines(report)]
    body.append("</ul>")
    body += [f'<p class="warn">{escape(w)}</p>' for w in report.get("warnings", [])]
    recs = report["recommendations"] or [{"text": report["recommendation"]}]
    body += [f'<p class="rec">{escape(r["text"])}</p>' for r in recs]
    if searched := budget_lines(report):
        body += ["<h2>Accuracy budget</h2>", "<ul>"] + [
            f"<li>{escape(text)}" + (f': <a href="{escape(link)}">{escape(link)}</a>' if link else "") + "</li>"
            for text, link in searched] + ["</ul>"]
    report_rows = [ReportRow.from_json(r) for r in report["rows"]]
    for batch, threads in groups(report_rows):
        group = [r for r in report_rows if r.batch == batch and r.threads == threads]
        rec = next((r["key"] for r in report["recommendations"] if (r["batch"], r["threads"]) == (batch, threads)),
                   None)
        if any(r.status == "ok" for r in group):
            body.append(scatter_svg(group, with_metric, f"Batch {batch}, {threads} thread(s)", y_label, rec))
    rows = display_rows(report)
    if rows:
        cols = list(rows[0])
        body.append("<table><thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in cols) + "</tr></thead><tbody>")
        for r in rows:
            status = r["status"].split(" ")[0] if not r["status"].startswith("not measured") else "not-measured"
            cells = []
            for c in cols:
                cls = ' class="note"' if c == "note" else (' class="text"' if c in ("backend", "precision", "status")
                                                           else "")
                cells.append(f"<td{cls}>{escape(r.get(c, ''))}</td>")
            body.append(f'<tr class="{escape(status)}">' + "".join(cells) + "</tr>")
        body.append("</tbody></table>")
    body.append(f"<p>{escape(FOOTNOTE)} Generated {escape(report['generated'])} from results.jsonl.</p>")
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"/><title>modelport bench: {escape(name)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
