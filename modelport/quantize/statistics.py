"""Statistics of the float model on the analysis samples: intermediate tensors exposed as outputs, the
signal-to-quantization-noise of every compute-op input under the cached ranges, and the SQNR of a rewritten
model's outputs against the float model's."""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport import similarity
from modelport.ort_session import ort_session
from modelport.quantize.graph import COMPUTE_OPS, Graph
from modelport.quantize.ranges import analysis_batches, bounds

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.settings import QdqSettings


def run_collecting(model_path: Path, tensors: Sequence[str], calibration: CalibrationSet, settings: QdqSettings,
                   on_batch: Callable[[dict[str, np.ndarray]], None], tmp_dir: Path) -> int:
    """Run the model with `tensors` exposed as outputs over the first samples; `on_batch` sees each result."""
    import onnx

    model = onnx.load(str(model_path))
    outputs = {o.name for o in model.graph.output}
    infos = {v.name: v for v in model.graph.value_info}
    for t in tensors:
        if t not in outputs and t in infos:
            model.graph.output.append(infos[t])
    path = tmp_dir / "exposed.onnx"
    onnx.save(model, str(path))
    session = ort_session(path)
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    seen = 0
    for batch in analysis_batches(calibration, settings):
        feed = {n: batch[n] for n in inputs}
        on_batch({**feed, **dict(zip(names, session.run(None, feed), strict=True))})
        seen += len(next(iter(batch.values())))
    return seen


def quant_params(lo: float, hi: float, act: str, symmetric: bool) -> tuple[float, float, float, float]:
    """ORT's scale, zero point and integer limits for an activation range."""
    qmin, qmax = (-128.0, 127.0) if act == "int8" else (0.0, 255.0)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        a = max(abs(lo), abs(hi))
        lo, hi = -a, a
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    zero = 0.0 if symmetric and act == "int8" else round(qmin - lo / scale)
    if symmetric and act == "uint8":
        zero = 128.0
    return scale, zero, qmin, qmax


def measure_sqnr(model_path: Path, calibration: CalibrationSet, settings: QdqSettings, graph: Graph, ranges: Any
                 ) -> dict[str, float]:
    """Signal-to-quantization-noise (dB) of every compute-op input quantized with its range."""
    tensors = sorted({t for n in graph.nodes.values() if n.op_type in COMPUTE_OPS for t in n.input
                      if t in graph.float_tensors and t in ranges.data})
    params = {}
    for t in tensors:
        lo, hi = bounds(ranges.data[t])
        params[t] = (quant_params(lo, hi, settings.activations, settings.symmetric_activations)
                     if math.isfinite(hi - lo) else None)
    signal: dict[str, float] = defaultdict(float)
    noise: dict[str, float] = defaultdict(float)

    def collect(result: dict[str, np.ndarray]) -> None:
        for t in tensors:
            if params[t] is None:
                continue
            scale, zero, qmin, qmax = params[t]
            x = result[t].astype(np.float64)
            xq = (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale
            signal[t] += float(np.square(x).sum())
            noise[t] += float(np.square(x - xq).sum())

    with tempfile.TemporaryDirectory(prefix="modelport-sqnr-") as tmp:
        run_collecting(model_path, tensors, calibration, settings, collect, Path(tmp))
    return {t: -math.inf if params[t] is None else sqnr_db(signal[t], noise[t]) for t in tensors}


def sqnr_db(signal: float, noise: float) -> float:
    """`similarity.sqnr_db` rounded to 0.01 dB, as the pass records it (+inf without noise, -inf without signal)."""
    return round(similarity.sqnr_db(signal, noise), 2)


def output_sqnr(reference: Path, candidate: Path, calibration: CalibrationSet, settings: QdqSettings) -> float:
    """SQNR (dB) of `candidate`'s float outputs against `reference`'s on the analysis samples, batch by batch
    (both run in step, so nothing but two sums is held)."""
    ref, cand = ort_session(reference), ort_session(candidate)
    inputs = [i.name for i in ref.get_inputs()]
    signal = noise = 0.0
    for batch in analysis_batches(calibration, settings):
        feed = {n: batch[n] for n in inputs}
        for r, c in zip(ref.run(None, feed), cand.run(None, feed), strict=True):
            if r.dtype.kind == "f":
                r64 = r.astype(np.float64)
                signal += float(np.square(r64).sum())
                noise += float(np.square(r64 - c).sum())
    return sqnr_db(signal, noise)
