"""The fidelity guard: cosine to float on calibration samples, and fallback rounds that keep the noisiest
compute ops in float while a round pays for the speed it gives up."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.ort_session import ort_session
from modelport.quantize.graph import COMPUTE_OPS, Graph
from modelport.quantize.ranges import analysis_batches
from modelport.similarity import row_cosines

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.rules import Why
    from modelport.quantize.settings import QdqSettings

BACKOFF_ROUNDS = 3
BACKOFF_PAYBACK = 2.0      # a round must close this many times the share of compute ops it moves to float


def _cosines(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]) -> float:
    """Mean over samples of the per-sample cosine similarity, worst over the float outputs (an all-zero sample
    against a non-zero one counts 0, two all-zero samples 1: `modelport/similarity.py`)."""
    per_output = []
    for k in range(len(ref[0])):
        if ref[0][k].dtype.kind != "f":
            continue
        values = []
        for r_batch, g_batch in zip(ref, got, strict=True):
            values.extend(row_cosines(g_batch[k], r_batch[k]))
        per_output.append(float(np.mean(values)))
    return min(per_output) if per_output else 1.0


def guard_fidelity(float_path: Path, q_path: Path, calibration: CalibrationSet, settings: QdqSettings, graph: Graph,
                   sqnr: Mapping[str, float], candidates: set[str], kept: dict[str, Why],
                   quantize: Callable[[Mapping[str, Why]], Path]) -> tuple[Path, dict[str, Any]]:
    """Measure cosine to float on calibration samples; while under target, keep the noisiest compute ops in float.

    A round is kept only when it pays: the share of the remaining gap it closes must be at least
    BACKOFF_PAYBACK times the share of compute ops it moved to float. Where the loss is local (a few
    outlier-ridden layers) one round closes most of the gap; where it is spread over every layer, as in a
    deep CNN whose every conv adds a little noise, float ops buy fidelity only in proportion to the speed
    they cost, and the artifact would end up as slow as FP32 without reaching the target. Then every op
    stays int8 and the result says why."""
    batches = list(analysis_batches(calibration, settings))

    def run(path: Path) -> list[list[np.ndarray]]:
        session = ort_session(path)
        names = [i.name for i in session.get_inputs()]
        return [session.run(None, {n: b[n] for n in names}) for b in batches]

    ref = run(float_path)
    target = float(settings.fidelity_target or 0.0)
    rounds: list[dict[str, Any]] = [{"kept_float": len(kept), "cosine": round(_cosines(ref, run(q_path)), 5)}]
    best = (rounds[0]["cosine"], q_path, dict(kept))
    order = sorted((n for n in candidates if graph.nodes[n].op_type in COMPUTE_OPS and n not in kept),
                   key=lambda n: min((sqnr.get(t, math.inf) for t in graph.nodes[n].input), default=math.inf))
    compute = max(1, len(order))
    while best[0] < target and order and len(rounds) <= BACKOFF_ROUNDS:
        take = max(1, math.ceil(len(order) / 4))
        for name in order[:take]:
            worst = min((sqnr.get(t, math.inf) for t in graph.nodes[name].input), default=math.inf)
            kept[name] = ("fidelity", f"kept in float to reach cosine {target} on calibration samples "
                                      f"(input {worst:.1f} dB signal-to-quantization-noise, among the noisiest)")
        order = order[take:]
        path = quantize(kept)
        cos = round(_cosines(ref, run(path)), 5)
        closed = min(1.0, (cos - best[0]) / (target - best[0]))
        cost = (len(kept) - len(best[2])) / compute
        paid = closed >= BACKOFF_PAYBACK * cost
        rounds.append({"kept_float": len(kept), "cosine": cos, "gap_closed": round(closed, 3),
                       "compute_share": round(cost, 3), "kept": paid})
        if paid:
            best = (cos, path, dict(kept))
    kept.clear()
    kept.update(best[2])
    samples = sum(len(next(iter(b.values()))) for b in batches)
    result = {"cosine": best[0], "target": target, "samples": samples, "rounds": rounds, "met": best[0] >= target}
    if best[0] < target:
        result["why_unmet"] = _why_unmet(rounds, best[1] == q_path)
    return best[1], result


def _why_unmet(rounds: list[dict[str, Any]], all_int8: bool) -> str:
    if len(rounds) == 1:
        return "no compute op was left to keep in float"
    if all_int8:
        return ("the loss is spread across the network: keeping its noisiest ops in float closed too little of the "
                f"gap for the speed it costs (a round must close {BACKOFF_PAYBACK:g}x its share of compute ops), so no "
                "more stays float than the range rules chose; for more fidelity try method=percentile or entropy, "
                "or fp16/fp32")
    return (f"the rounds that paid were kept ({sum(bool(r.get('kept')) for r in rounds)} of {len(rounds) - 1}) "
            "and the gap that is left is spread too thin to close without giving up the speed-up")
