"""Checks of calibration data against the model's input specs, before any backend sees it.

Every mismatch is a `CheckFailed` (a BadInput, exit 2) that names the sample, the input and what the model
expects. `inspect_calibration` runs the same checks over a whole set and reports them instead of stopping
at the first, for `modelport calib inspect`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.calibration.fingerprint import combine, sample_digest
from modelport.errors import BadInput, ModelportWarning
from modelport.specs import TensorSpec

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet

LABEL_KEYS = ("label", "labels")
MIN_INT8_SAMPLES = 100
CHECKS = {
    "names": "input names",
    "rank": "ranks",
    "dims": "static and shared dims",
    "dtype": "dtypes (lossless casts)",
    "finite": "no NaN or Inf",
}


class CheckFailed(BadInput):
    """Calibration data that does not fit the model; `check` is one of CHECKS."""

    def __init__(self, check: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.check = check


class CalibrationWarning(ModelportWarning):
    """Calibration data that works but makes a weak INT8 build: synthetic, or too few samples."""


def to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _cast(a: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """`a` as the spec's dtype where no value changes; narrowing floats only rounds, so only overflow fails."""
    want = np.dtype(spec.dtype)
    if a.dtype == want:
        return a
    if a.dtype.kind not in "biuf":
        raise CheckFailed("dtype", f"{where}: input {spec.name!r} is {a.dtype}; the model expects {spec} and "
                                   f"{a.dtype} data cannot be cast to {want}.")
    with np.errstate(all="ignore"):
        cast = a.astype(want)
        if a.dtype.kind == "f" and want.kind == "f":
            lost = np.isfinite(a) & ~np.isfinite(cast)
            why = f"is outside the range of {want}"
        else:
            back = cast.astype(a.dtype)
            lost = back != a
            if a.dtype.kind == "f":
                lost &= ~(np.isnan(a) & np.isnan(back))
            why = f"cannot be held exactly by {want}"
    if lost.any():
        idx = _first_index(lost)
        raise CheckFailed("dtype", f"{where}: input {spec.name!r} is {a.dtype}, and its value {a[idx].item()!r} at "
                                   f"index {idx} {why} ({int(lost.sum())} such values); the model expects {spec}.",
                          hint=f"Store {spec.name!r} as {want}, or as values that convert to it exactly.")
    return cast


def conform(sample: Mapping[str, Any], specs: Sequence[TensorSpec], where: str) -> dict[str, np.ndarray]:
    """One sample checked against the input specs: names, rank, static and shared dims, dtype, finiteness.

    Each input comes back with the model's dtype (cast only where no value changes); a sample stored
    with an extra leading axis of 1 (1x1xCxHxW for a CxHxW-sample model) loses it. Label keys are ignored.
    """
    names = [s.name for s in specs]
    given = {k for k in sample if k not in LABEL_KEYS}
    if given != set(names):
        missing, extra = sorted(set(names) - given), sorted(given - set(names))
        raise CheckFailed("names", f"{where}: the inputs do not match the model's. Missing: {missing or 'none'}; "
                                   f"extra: {extra or 'none'}.",
                          hint=f"The model's inputs are {names}; key the data by these names.")
    out: dict[str, np.ndarray] = {}
    seen_dims: dict[str, tuple[int, str, int]] = {}
    for spec in specs:
        a = to_numpy(sample[spec.name])
        rank = len(spec.shape)
        if a.ndim == rank + 1 and a.shape[:2] == (1, 1):
            a = a[0]  # a one-sample batch stored with an extra leading axis
        if a.ndim != rank:
            raise CheckFailed("rank", f"{where}: input {spec.name!r} has shape {a.shape} (rank {a.ndim}); the model "
                                      f"expects rank {rank} ({spec}).")
        for axis, (got, want) in enumerate(zip(a.shape, spec.shape, strict=True)):
            if isinstance(want, int):
                if axis > 0 and got != want:
                    raise CheckFailed("dims", f"{where}: input {spec.name!r} has shape {a.shape}; axis {axis} must "
                                              f"be {want} ({spec}).")
            elif want in seen_dims and seen_dims[want][0] != got:
                size, other, other_axis = seen_dims[want]
                raise CheckFailed("dims", f"{where}: dim {want!r} is {got} on input {spec.name!r} axis {axis} but "
                                          f"{size} on input {other!r} axis {other_axis}; inputs sharing a dim must "
                                          "agree.")
            else:
                seen_dims[want] = (got, spec.name, axis)
        a = _cast(a, spec, where)
        if a.dtype.kind == "f":
            bad = ~np.isfinite(a)
            if bad.any():
                idx = _first_index(bad)
                raise CheckFailed("finite", f"{where}: input {spec.name!r} has {int(bad.sum())} NaN or Inf values "
                                            f"(the first, {a[idx].item()}, at index {idx}).",
                                  hint="Clean or drop these samples: calibration ranges over them are meaningless.")
        out[spec.name] = a
    return out


def calibration_warnings(calibration: CalibrationSet, precision: str = "int8") -> list[str]:
    """Why an INT8 build on this set may be weak (synthetic data, fewer than 100 samples); empty if none."""
    if precision != "int8":
        return []
    found = []
    if calibration.synthetic:
        found.append("INT8 calibrated on synthetic data: the artifact's accuracy means nothing; use it for "
                     "latency only, and pass --calib with real data to judge accuracy.")
    elif len(calibration) < MIN_INT8_SAMPLES:
        found.append(f"Only {len(calibration)} calibration samples from {calibration.source.description}: INT8 "
                     f"ranges from fewer than {MIN_INT8_SAMPLES} representative samples are often off. Give more "
                     "with --calib-size or a larger source.")
    return found


def warn_if_weak(calibration: CalibrationSet, precision: str = "int8") -> list[str]:
    """Issue a CalibrationWarning for each of `calibration_warnings`, and return them."""
    found = calibration_warnings(calibration, precision)
    for message in found:
        warnings.warn(message, CalibrationWarning, stacklevel=2)
    return found


class _Stats:
    """Streaming value statistics of one input (in float64, whatever its dtype); a sum or square beyond
    float64's range (values near 1e300) makes that statistic None, never an OverflowError."""

    def __init__(self) -> None:
        self.count = 0
        self.total = np.float64(0.0)
        self.squares = np.float64(0.0)
        self.low = np.inf
        self.high = -np.inf
        self.nonfinite = 0
        self.shapes: dict[str, int] = {}
        self.dtypes: set[str] = set()

    def add(self, a: np.ndarray) -> None:
        shape = "x".join(str(d) for d in a.shape)
        self.shapes[shape] = self.shapes.get(shape, 0) + 1
        self.dtypes.add(str(a.dtype))
        if a.dtype.kind not in "biuf" or not a.size:
            return
        values = a.astype(np.float64, copy=False).ravel()
        finite = np.isfinite(values)
        self.nonfinite += int(values.size - finite.sum())
        if not finite.all():
            values = values[finite]
        if values.size:
            self.count += values.size
            with np.errstate(over="ignore", invalid="ignore"):
                self.total += values.sum()
                self.squares += np.square(values).sum()
            self.low = min(self.low, float(values.min()))
            self.high = max(self.high, float(values.max()))

    def to_json(self) -> dict[str, Any]:
        mean = std = None
        if self.count:
            with np.errstate(over="ignore", invalid="ignore"):
                mean = self.total / self.count
                std = np.sqrt(max(self.squares / self.count - mean**2, 0.0))
        return {"shapes": self.shapes, "dtypes": sorted(self.dtypes), "min": None if not self.count else self.low,
                "max": None if not self.count else self.high, "mean": _finite(mean), "std": _finite(std),
                "nonfinite": self.nonfinite}


def _finite(value: np.floating | None) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def inspect_calibration(calibration: CalibrationSet, precision: str = "int8", max_messages: int = 5) -> dict:
    """Shapes, dtypes and value ranges per input, labels, and every check's outcome over the whole set."""
    source, specs = calibration.source, calibration.specs
    stats = {s.name: _Stats() for s in specs}
    extra_stats: dict[str, _Stats] = {}
    failures: dict[str, list[str]] = {name: [] for name in CHECKS}
    failed_samples: dict[str, int] = dict.fromkeys(CHECKS, 0)
    unchecked: dict[str, int] = dict.fromkeys(CHECKS, 0)  # samples that failed an earlier check
    labels: dict[str, int] = {}
    digests = []
    for index in calibration.indices:
        raw = source.read(index)
        for name, value in raw.items():
            if name in LABEL_KEYS:
                continue
            (stats.get(name) or extra_stats.setdefault(name, _Stats())).add(to_numpy(value))
        label = calibration.label_of(index, raw)
        if label is not None:
            key = str(label.tolist())
            labels[key] = labels.get(key, 0) + 1
        try:
            digests.append(sample_digest(conform(raw, specs, calibration.where(index))))
        except CheckFailed as exc:
            failed_samples[exc.check] += 1
            for later in list(CHECKS)[list(CHECKS).index(exc.check) + 1:]:
                unchecked[later] += 1
            if len(failures[exc.check]) < max_messages:
                failures[exc.check].append(exc.message)
    checks = [{"check": name, "what": what, "ok": not failed_samples[name], "failed_samples": failed_samples[name],
               "unchecked_samples": unchecked[name], "messages": failures[name]} for name, what in CHECKS.items()]
    ok = all(c["ok"] for c in checks)
    classes = getattr(source, "classes", None)
    return {
        "source": source.description, "kind": getattr(source, "kind", type(source).__name__),
        "found": len(source), "used": len(calibration), "seed": calibration.seed, "synthetic": calibration.synthetic,
        "details": getattr(source, "details", dict)(),
        "inputs": [{"name": s.name, "expected": str(s), **stats[s.name].to_json()} for s in specs]
        + [{"name": name, "expected": None, **st.to_json()} for name, st in extra_stats.items()],
        "labels": {"count": sum(labels.values()), "distinct": len(labels), "classes": classes,
                   "counts": dict(sorted(labels.items(), key=lambda kv: (len(kv[0]), kv[0]))[:50])} if labels else None,
        "checks": checks, "ok": ok,
        "warnings": calibration_warnings(calibration, precision),
        "fingerprint": combine(digests) if ok else None,  # what calibration.fingerprint gives, in the same pass
    }
