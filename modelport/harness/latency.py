"""The statistics of timed runs (the loops that time them are `modelport/timing.py`).

Percentiles use linear interpolation between closest ranks (numpy's default, as Olive reports them);
the standard deviation is the population one (ddof=0) over the timed runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def speedup(base: Mapping[str, Any], row: Mapping[str, Any]) -> float | None:
    """How many times faster `row` runs than `base`: the median of their per-round ratios where both were
    timed in the same interleaved rounds (drift cancels), else the ratio of their p50s."""
    base_rounds, rounds = base.get("round_ms") or [], row.get("round_ms") or []
    if base_rounds and len(base_rounds) == len(rounds) and all(rounds):
        return float(np.median([b / r for b, r in zip(base_rounds, rounds, strict=True)]))
    if base.get("p50_ms") and row.get("p50_ms"):
        return float(base["p50_ms"] / row["p50_ms"])
    return None


def summarize(times_ns: np.ndarray, batch: int) -> dict[str, float | int]:
    """p50/p90/p99, mean, std, min, max in milliseconds and throughput in samples per second."""
    t = np.asarray(times_ns, dtype=np.float64) / 1e6
    if t.size == 0:
        raise ValueError("no timed runs")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    mean = float(t.mean())
    return {"iterations": int(t.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": mean, "std_ms": float(t.std()), "min_ms": float(t.min()), "max_ms": float(t.max()),
            "throughput": batch * 1e3 / mean if mean > 0 else None}
