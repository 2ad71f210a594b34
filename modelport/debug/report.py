"""The debug record as a rich table of the worst layers, `debug.json` and a self-contained `debug.html` with an
inline SVG of SQNR along the depth of the network (one line per comparison, culprits marked)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")
MARKED = 3  # culprits marked on the plot


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(record: Mapping[str, Any], console: Console, top: int = 10) -> None:
    """The `top` culprits, worst first, and where the numbers come from."""
    table = Table(title=f"Layers adding the most error: {escape(record['artifact'])} vs "
                        f"{escape(record['reference']['label'])} ({record['samples']} samples)")
    for col in ("#", "tensor", "torch module", "op", "SQNR dB", "cosine", "max abs", "jump dB"):
        table.add_column(col, justify="right" if col in ("#", "SQNR dB", "cosine", "max abs", "jump dB") else "left")
    for rank, e in enumerate(record["culprits"][:top], 1):
        table.add_row(str(rank), escape(e["tensor"]), escape(e["module"] or "-"), e["op_type"], _num(e["sqnr_db"]),
                      _num(e["cosine"], 4), _num(e["max_abs"], 3), _num(e["jump_db"]))
    console.print(table)
    not_compared = [e for e in record["layers"] if e["status"] != "ok"]
    console.print(f"{record['compared']} of {len(record['layers'])} tensors compared"
                  + (f"; {len(not_compared)} not exposed by a runtime (see debug.json: status, reason)"
                     if not_compared else ""), style="dim")


def write_json(record: Mapping[str, Any], out_dir: Path) -> Path:
    path = out_dir / "debug.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def write_html(record: Mapping[str, Any], out_dir: Path) -> Path:
    """A page that needs nothing else: the plot, then the culprits and every layer as tables."""
    path = out_dir / "debug.html"
    e = html.escape
    rows = "".join(
        f"<tr><td>{i}</td><td>{e(c['tensor'])}</td><td>{e(c['module'] or '-')}</td><td>{e(c['op_type'])}</td>"
        f"<td>{_num(c['sqnr_db'])}</td><td>{_num(c['cosine'], 4)}</td><td>{_num(c['jump_db'])}</td></tr>"
        for i, c in enumerate(record["culprits"][:20], 1))
    layers = "".join(
        f"<tr><td>{c['depth']}</td><td>{e(c['tensor'])}</td><td>{e(c['module'] or '-')}</td><td>{e(c['op_type'])}</td>"
        f"<td>{e(c['status'])}</td><td>{_num(c['sqnr_db'])}</td><td>{_num(c['jump_db'])}</td>"
        f"<td>{e(c['reason'] or '')}</td></tr>" for c in record["layers"])
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in ("#", "tensor", "torch module", "op", "SQNR dB", "cosine",
                                                      "jump dB")) + "</tr>"
    all_head = "<tr>" + "".join(f"<th>{h}</th>" for h in ("depth", "tensor", "torch module", "op", "status",
                                                          "SQNR dB", "jump dB", "why")) + "</tr>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>modelport debug: {e(record['artifact'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}</style></head><body>
<h1>Per-layer divergence: {e(record['artifact'])}</h1>
<p>{e(record['backend'])} {e(record['precision'])} against {e(record['reference']['label'])}, {record['samples']}
samples of {e(record['evaluation'])}; {record['compared']} of {len(record['layers'])} tensors compared.
The jump is the SQNR of a layer's inputs minus its own: the error that layer adds.</p>
{_svg(record)}
<h2>Culprits</h2><table>{head}{rows}</table>
<h2>Every tensor, in topological order</h2><table>{all_head}{layers}</table></body></html>"""
    path.write_text(page)
    return path


def _svg(record: Mapping[str, Any], width: int = 900, height: int = 320, pad: int = 48) -> str:
    """SQNR (dB, y) against depth (x), a polyline per comparison; the top culprits circled and named."""
    series = [(c["label"], [(i, v) for i, v in enumerate(c["sqnr_db"]) if v is not None])
              for c in record["comparisons"]]
    values = [v for _, points in series for _, v in points]
    if not values:
        return "<p>No tensor could be compared.</p>"
    low, high = min(min(values), 0.0), max(values) + 5
    n = max(len(record["layers"]) - 1, 1)

    def xy(i: float, v: float) -> tuple[float, float]:
        return pad + i / n * (width - 2 * pad), height - pad - (v - low) / (high - low) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="SQNR along the depth of the network">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>',
             f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle" font-size="12">depth (tensor index, '
             'topological order)</text>',
             f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" text-anchor="middle" '
             'font-size="12">SQNR (dB)</text>']
    for tick in range(int(low // 10 * 10), int(high) + 1, 10):
        _, y = xy(0, tick)
        parts.append(f'<text x="{pad - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{tick}</text>')
    for k, (label, points) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in points))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        parts.append(f'<text x="{width - pad}" y="{pad + 14 * k}" text-anchor="end" font-size="11" '
                     f'fill="{color}">{html.escape(label)}</text>')
    for c in record["culprits"][:MARKED]:
        x, y = xy(c["depth"], c["sqnr_db"] if c["sqnr_db"] is not None else high)
        name = html.escape(c["module"] or c["tensor"])
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="none" stroke="#000" stroke-width="2">'
                     f'<title>{html.escape(c["tensor"])}: jump {_num(c["jump_db"])} dB</title></circle>'
                     f'<text x="{x + 7:.1f}" y="{y - 7:.1f}" font-size="11">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)
