"""The budget policy: which rows may be recommended, and the recommendation itself.

- With a task metric (labelled evaluation data): the row's metric may fall at most `max_drop` below
  PyTorch FP32's (default 1 point: one percentage point of top-1 accuracy);
- without one: SQNR against PyTorch FP32 of at least `min_sqnr` dB (default 20 dB: noise at 1% of the
  signal's power) and mean per-sample cosine similarity of at least `min_cosine` (default 0.99), on the
  worst output;
- outputs holding NaN or Inf never pass;
- with an expression (`bench --budget cos>=0.995,sqnr>=25,drop<=1`, modelport/tune/budget.py): every bound it
  states, and nothing else (the search held each runtime's INT8 row to the same expression).

The recommendation, per batch size and thread count, is the row with the lowest p50 latency that passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelport.errors import BadInput
from modelport.harness.report import fmt

if TYPE_CHECKING:
    from modelport.harness.report.aggregate import ReportRow
    from modelport.tune.budget import Budget as Bounds


@dataclass(frozen=True)
class Budget:
    """How much fidelity a recommended row may give up against PyTorch FP32."""

    max_drop: float = 1.0
    min_sqnr: float = 20.0
    min_cosine: float = 0.99
    expr: str | None = None  # a --budget expression: it replaces the three thresholds above

    def __post_init__(self) -> None:
        if self.max_drop < 0:
            raise BadInput(f"--max-drop must be zero or positive, not {self.max_drop}.")
        if not -1 <= self.min_cosine <= 1:
            raise BadInput(f"--min-cosine must be between -1 and 1, not {self.min_cosine}.")
        if self.expr is not None:  # a bad expression fails here, before any work
            _parse(self.expr)

    @property
    def bounds(self) -> Bounds:
        """The expression's bounds (only with `expr`)."""
        assert self.expr is not None
        return _parse(self.expr)

    def describe(self, metric: Mapping[str, Any] | None) -> str:
        """The budget in words, as the recommendation states it."""
        if self.expr is not None:
            return f"{self.bounds.describe()} against PyTorch FP32"
        if metric is not None:
            return (f"at most {self.max_drop:g} {fmt.points(metric, self.max_drop)} below PyTorch FP32's "
                    f"{metric['name']}")
        return f"SQNR >= {self.min_sqnr:g} dB and cosine >= {self.min_cosine:g} against PyTorch FP32"


def _parse(expr: str) -> Bounds:
    """The tune package's parser, imported only where an expression is in use (it imports the search)."""
    from modelport.tune.budget import parse_budget

    return parse_budget(expr)


def meets_budget(row: ReportRow, budget: Budget, with_metric: bool) -> bool | None:
    """Whether a row's fidelity is within budget; None when it has no fidelity to judge."""
    if not row.has_fidelity:
        return None
    if row.nonfinite:
        return False
    if budget.expr is not None:
        drop = -row.metric_delta if row.metric_delta is not None else None
        return budget.bounds.met({"cos": 1.0 if row.identical else row.cosine,
                                  "sqnr": math.inf if row.identical else row.sqnr_db, "drop": drop})
    if with_metric:
        return row.metric_delta is not None and row.metric_delta >= -budget.max_drop - 1e-9
    if row.identical:
        return True
    return (row.sqnr_db is not None and row.sqnr_db >= budget.min_sqnr
            and row.cosine is not None and row.cosine >= budget.min_cosine)


def recommend(rows: Sequence[ReportRow], budget: Budget, metric: Mapping[str, Any] | None,
              batch: int, threads: int) -> dict[str, Any]:
    """The fastest row within budget at one batch size and thread count, as one line of text."""
    group = [r for r in rows if r.batch == batch and r.threads == threads and r.status == "ok"
             and r.p50_ms is not None]
    where = f"batch {batch}, {threads} thread{'s' if threads != 1 else ''}"
    passing = sorted((r for r in group if r.meets_budget), key=lambda r: r.p50_ms)
    if not passing:
        text = f"At {where}: no measured row meets the budget ({budget.describe(metric)})."
        return {"batch": batch, "threads": threads, "key": None, "text": text}
    best = passing[0]
    parts = [f"p50 {fmt.ms(best.p50_ms)} ms"]
    if not best.is_baseline and best.speedup:
        parts.append(f"{best.speedup:.1f}x PyTorch FP32")
    if metric is not None and best.metric is not None:
        parts.append(f"{metric['name']} {fmt.num(best.metric)} ({fmt.signed(best.metric_delta)} "
                     f"{fmt.points(metric)})")
    elif best.identical:
        parts.append("outputs identical to PyTorch")
    else:
        parts.append(f"SQNR {fmt.num(best.sqnr_db)} dB, cosine {best.cosine:.4f}")
    text = f"At {where}, ship {best.label}: {', '.join(parts)}; the fastest of {len(passing)} within budget " \
           f"({budget.describe(metric)})."
    return {"batch": batch, "threads": threads, "key": best.key, "text": text}
