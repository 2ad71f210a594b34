"""report.md: the header, the recommendation and the results table as GitHub-flavoured Markdown."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelport.harness.report.cells import FOOTNOTE, display_rows, header_lines
from modelport.harness.report.fmt import md_cell
from modelport.harness.report.searched import budget_lines


def render_markdown(report: Mapping[str, Any]) -> str:
    rows = display_rows(report)
    out = [f"# modelport bench: {md_cell(report['model']['name'])}", ""]
    out += [f"- {md_cell(line)}" for line in header_lines(report)]
    out += [f"- **Warning:** {md_cell(w)}" for w in report.get("warnings", [])]
    out += ["", "## Recommendation", ""] + [f"- {md_cell(r['text'])}" for r in report["recommendations"]]
    if not report["recommendations"]:
        out.append(f"- {report['recommendation']}")
    if searched := budget_lines(report):
        out += ["", "## Accuracy budget", ""] + [f"- {md_cell(text)}" + (f": [{link}]({link})" if link else "")
                                                 for text, link in searched]
    out += ["", "## Results", ""]
    if rows:
        cols = list(rows[0])
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        out += ["| " + " | ".join(md_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    out += ["", FOOTNOTE, ""]
    return "\n".join(out)
