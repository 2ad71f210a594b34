"""Text formatting every renderer shares: latencies, numbers, sizes, rates, metric units, escaping."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from modelport.console import human_bytes


def ms(v: float | None) -> str:
    """A latency in ms with the digits that matter at its size."""
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}" if v >= 0.01 else f"{v:.4f}"


def num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def signed(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:+.{digits}f}"


def size(n: float | None) -> str:
    return "-" if n is None else human_bytes(n)


def rate(v: float | None) -> str:
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def points(metric: Mapping[str, Any], amount: float | None = None) -> str:
    """The unit a task metric's delta is in ("points" for percentages), singular for exactly one."""
    unit = "point" if metric.get("units") == "percentage points" else metric.get("units", "units")
    return unit + ("s" if unit == "point" and amount != 1 else "")


def md_cell(text: Any) -> str:
    """Text safe inside one GitHub-flavoured Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def escape(text: Any) -> str:
    """Text safe inside HTML/SVG elements and attributes."""
    return html.escape(str(text), quote=True)
