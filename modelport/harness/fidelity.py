"""How far a runtime's outputs are from the PyTorch FP32 reference, and what that costs on the task.

Per output: max and mean absolute error, cosine similarity (per sample, then averaged; the worst
sample is kept too), SQNR in dB over the whole output, and for classifier-shaped outputs (rank 2,
N x C with C >= 2) the share of samples whose arg-max agrees with the reference. Where the evaluation
data has labels, a task metric (top-1 accuracy in percent, or a user's `file.py:fn`) is computed on
both sides and the row carries its delta to PyTorch FP32.

Every number is a plain float or None, so rows serialise to strict JSON: None means "not defined"
(SQNR of an output identical to the reference, metrics of outputs that hold NaN or Inf). Cosine and SQNR
themselves, and what they are where a side is all zeros, are `modelport/similarity.py`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.errors import BadInput
from modelport.similarity import finite_or_none, row_cosines, sqnr_db

MetricFn = Callable[[Mapping[str, np.ndarray], np.ndarray], float]


def is_classifier(ref: np.ndarray) -> bool:
    """N x C floats with at least two classes: the shape arg-max agreement and accuracy apply to."""
    return ref.ndim == 2 and ref.shape[1] >= 2 and ref.dtype.kind == "f"


def compare_output(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Error metrics of one output against its reference (same shape; samples on axis 0)."""
    out = np.asarray(out)
    ref = np.asarray(ref)
    if out.shape != ref.shape:
        raise ValueError(f"shape {out.shape} differs from the reference's {ref.shape}")
    o = out.astype(np.float64).reshape(len(ref), -1) if ref.ndim else out.astype(np.float64).reshape(1, 1)
    r = ref.astype(np.float64).reshape(o.shape)
    nonfinite = int(np.count_nonzero(~np.isfinite(o)))
    result: dict[str, Any] = {"shape": list(ref.shape), "nonfinite": nonfinite}
    if nonfinite:
        result.update(max_abs=None, mean_abs=None, cosine=None, cosine_min=None, sqnr_db=None)
    else:
        err = o - r
        abs_err = np.abs(err)
        cos = row_cosines(o, r)
        result.update(max_abs=float(abs_err.max(initial=0.0)), mean_abs=float(abs_err.mean()) if abs_err.size else 0.0,
                      cosine=float(cos.mean()), cosine_min=float(cos.min()),
                      sqnr_db=finite_or_none(sqnr_db(float(np.sum(r * r)), float(np.sum(err * err)))))
    if is_classifier(ref):
        result["top1_agreement"] = float(np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1)))
    return result


def summarize(per_output: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The worst case over outputs: what a budget is checked against."""
    def worst(key: str, pick: Callable[..., float]) -> float | None:
        values = [m[key] for m in per_output.values() if m.get(key) is not None]
        return pick(values) if values else None

    nonfinite = sum(m["nonfinite"] for m in per_output.values())
    identical = all(m["max_abs"] == 0 for m in per_output.values())
    sqnr = worst("sqnr_db", min)
    return {"max_abs": worst("max_abs", max), "mean_abs": worst("mean_abs", max), "cosine": worst("cosine", min),
            "cosine_min": worst("cosine_min", min), "sqnr_db": sqnr, "identical": identical and not nonfinite,
            "top1_agreement": worst("top1_agreement", min), "nonfinite": nonfinite}


def top1_accuracy(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy in percent from the first classifier-shaped output."""
    for value in outputs.values():
        if is_classifier(np.asarray(value)):
            return float(np.mean(np.argmax(value, axis=1) == labels.reshape(-1)) * 100.0)
    raise ValueError("no output is classifier-shaped (N x C floats)")


@dataclass(frozen=True)
class TaskMetric:
    """A named task metric, higher is better; `units` says what a point of --max-drop means."""

    name: str
    fn: MetricFn
    units: str

    def __call__(self, outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
        return float(self.fn(outputs, labels))


ACCURACY = TaskMetric("top1_accuracy", top1_accuracy, "percentage points")


def load_metric(ref: str | None) -> TaskMetric:
    """The built-in top-1 accuracy, or a user's `file.py:fn` / `package.module:fn`.

    A user's function takes (outputs: dict of name -> array over the evaluation set, labels) and
    returns one float where higher is better; --max-drop is in its units.
    """
    if ref is None:
        return ACCURACY
    from modelport.usercode import import_user_callable

    fn, _ = import_user_callable(ref, "metric", "--metric")
    return TaskMetric(ref.rpartition(":")[2], fn, "metric units")


def task_metric_applies(metric: TaskMetric, reference: Mapping[str, np.ndarray], labels: np.ndarray | None) -> bool:
    """Whether the metric can be computed: labels exist and, for accuracy, an output is a classifier."""
    if labels is None:
        return False
    if metric is ACCURACY:
        return any(is_classifier(np.asarray(v)) and len(v) == len(labels) for v in reference.values())
    return True


def evaluate(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], labels: np.ndarray | None,
             metric: TaskMetric | None, reference_metric: float | None) -> dict[str, Any]:
    """The fidelity record of one row: per-output metrics, their worst case, and the task metric."""
    missing = sorted(set(reference) - set(outputs))
    if missing:
        raise ValueError(f"the runner returned no output named {', '.join(missing)} (it returned "
                         f"{', '.join(sorted(outputs)) or 'nothing'})")
    per_output = {}
    for name, ref in reference.items():
        try:
            per_output[name] = compare_output(outputs[name], ref)
        except ValueError as exc:
            raise ValueError(f"output {name!r}: {exc}") from None
    record: dict[str, Any] = {"outputs": per_output, "summary": summarize(per_output), "metric": None}
    if metric is not None and labels is not None and reference_metric is not None:
        value = finite_or_none(metric({k: outputs[k] for k in reference}, labels))
        record["metric"] = {"name": metric.name, "units": metric.units, "value": value,
                            "reference": reference_metric,
                            "delta": None if value is None else value - reference_metric}
    return record


def reference_metric(metric: TaskMetric, reference: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
    """The task metric of PyTorch FP32 itself: the baseline every delta is against."""
    try:
        value = metric(reference, labels)
    except Exception as exc:
        raise BadInput(f"The task metric {metric.name} failed on the PyTorch outputs: {type(exc).__name__}: {exc}",
                       hint="A metric takes (outputs: dict of name -> array, labels: array) and returns a float."
                       ) from exc
    if not math.isfinite(value):
        raise BadInput(f"The task metric {metric.name} returned {value} on the PyTorch outputs.")
    return value
