"""report.html: one self-contained page (no scripts, no external styles, fonts or images; valid as XML too).

The header and the recommendations, then per batch size and thread count a latency chart and the Pareto plot
(bars.py, svg.py), the size chart, and the table in a box of its own that scrolls sideways on a narrow
screen. A row that was not measured says why in its status cell; a row whose artifact has a `modelport
debug` page links to it (a relative link: the page sits beside report.html in the bench directory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelport.harness.report.aggregate import ReportRow, groups
from modelport.harness.report.bars import latency_svg, size_svg
from modelport.harness.report.cells import FOOTNOTE, LAYER_PLOT, display_rows, header_lines
from modelport.harness.report.fmt import escape
from modelport.harness.report.searched import budget_lines
from modelport.harness.report.svg import scatter_svg

_CSS = """
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fafafa;
       overflow-wrap: anywhere; }
main { max-width: 1320px; margin: 0 auto; padding: 1.5em 2em 3em; }
h1 { font-size: 24px; margin: 0.2em 0 0.5em; }
h2 { font-size: 17px; margin: 1.6em 0 0.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
ul.meta { color: #444; font-size: 13px; padding-left: 1.2em; margin: 0.4em 0; }
p.warn { background: #fff6e0; padding: 0.5em 0.8em; border-left: 4px solid #e90; }
p.rec { font-size: 15px; background: #eef7ee; padding: 0.5em 0.8em; border-left: 4px solid #3a3; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 540px), 1fr)); gap: 1em 1.5em;
          align-items: start; }
figure { margin: 0; background: #fff; border: 1px solid #e3e3e3; padding: 6px; }
svg.chart { display: block; width: 100%; max-width: 760px; height: auto; }
svg text { font-size: 12px; fill: #333; }
svg .title { font-size: 14px; font-weight: 600; }
svg .group { font-weight: 600; }
svg .axis { fill: #555; }
svg .note { fill: #a35f00; }
p.unplotted { font-size: 13px; color: #555; margin: 0.5em 0 0; }
.scroll { overflow-x: auto; max-width: 100%; border: 1px solid #ddd; background: #fff; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #e2e2e2; padding: 3px 7px; text-align: right; white-space: nowrap; background: #fff;
         vertical-align: top; overflow-wrap: normal; }
th { background: #f3f3f3; position: sticky; top: 0; }
th:first-child, td:first-child { position: sticky; left: 0; z-index: 1; }
td.text { text-align: left; }
td.status { text-align: left; }
td.status .why { white-space: normal; min-width: 18em; max-width: 30em; font-size: 12px; color: #8a2a2a;
                 overflow-wrap: anywhere; }
tr.failed td { background: #fff0f0; }
tr.skipped td, tr.unavailable td, tr.not-measured td { color: #777; }
tr.unavailable td .why, tr.skipped td .why, tr.not-measured td .why { color: #666; }
p.foot { font-size: 12px; color: #555; }
"""


def _status_class(status: str) -> str:
    return "not-measured" if status.startswith("not measured") else status.split(" ")[0]


def _table(rows: Sequence[dict[str, str]]) -> str:
    """The rows as a table whose status cells carry the reason, in a box that scrolls sideways."""
    cols = [c for c in rows[0] if c != "note"]
    out = ['<div class="scroll"><table><thead><tr>' + "".join(f"<th>{escape(c)}</th>" for c in cols)
           + "</tr></thead><tbody>"]
    for r in rows:
        cells = []
        for c in cols:
            value = r.get(c, "")
            if c == "status":
                why = f'<div class="why">{escape(r["note"])}</div>' if r.get("note") else ""
                cells.append(f'<td class="status">{escape(value)}{why}</td>')
            elif c == LAYER_PLOT and value != "-":
                cells.append(f'<td class="text"><a href="{escape(value)}">per-layer plot</a></td>')
            else:
                cls = ' class="text"' if c in ("backend", "precision", "build budget") else ""
                cells.append(f"<td{cls}>{escape(value)}</td>")
        out.append(f'<tr class="{escape(_status_class(r["status"]))}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _unplotted(group: Sequence[ReportRow]) -> str:
    """The rows of one batch size that have no bar, by status, so that nothing leaves the charts unsaid."""
    missing: dict[tuple[str, str], list[str]] = {}
    for r in group:
        if r.status != "ok" or not r.p50_ms:
            missing.setdefault((r.title or r.backend, r.status), []).append(r.precision)
    if not missing:
        return ""
    named = "; ".join(f"{title} {', '.join(precisions)} ({status})" for (title, status), precisions in missing.items())
    return f'<p class="unplotted">Not in the charts: {escape(named)}. The table says why.</p>'


def _batch_section(report: Mapping[str, Any], group: Sequence[ReportRow], batch: int, threads: int) -> list[str]:
    metric = report.get("reference_metric")
    where = f"Batch {batch}, {threads} thread{'s' if threads != 1 else ''}"
    rec = next((r["key"] for r in report["recommendations"] if (r["batch"], r["threads"]) == (batch, threads)), None)
    charts = [c for c in (latency_svg(group, f"Latency: {where.lower()}"),
                          scatter_svg(group, metric is not None, f"Latency against fidelity: {where.lower()}",
                                      metric["name"] if metric else "SQNR vs PyTorch FP32, dB", rec)
                          if any(r.status == "ok" for r in group) else None) if c]
    out = [f"<section><h2>{escape(where)}</h2>"]
    if charts:
        out.append('<div class="charts">' + "".join(f"<figure>{c}</figure>" for c in charts) + "</div>")
    out.append(_unplotted(group) + "</section>")
    return out


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: no scripts, no external styles, fonts or images, valid as XML too."""
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
        body += _batch_section(report, [r for r in report_rows if (r.batch, r.threads) == (batch, threads)],
                               batch, threads)
    if sizes := size_svg(report_rows, "Size on disk of each artifact"):
        body.append(f'<section><h2>Size</h2><div class="charts"><figure>{sizes}</figure></div></section>')
    rows = display_rows(report)
    if rows:
        body.append("<section><h2>Every row</h2>" + _table(rows) + "</section>")
    body.append(f'<p class="foot">{escape(FOOTNOTE)} Generated {escape(report["generated"])} from results.jsonl.</p>')
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"/>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
            f"<title>modelport bench: {escape(name)}</title><style>{_CSS}</style></head><body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")
