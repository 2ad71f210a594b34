"""Activation ranges through ORT's own calibrators (MinMax, Entropy, Percentile), fed from the CalibrationSet
in bounded chunks: batching, the reader ORT pulls from, and the min/max probe for sentinel-sized tensors."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport import progress
from modelport.errors import BadInput, StepFailed
from modelport.quantize.ort_tools import calibration_method

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.settings import QdqSettings

EXTREME_ABS = 1e4          # no trained activation reaches this; -1e4, -1e9 and float-min masks do
CHUNK_SAMPLES = 32         # samples whose reduced min/max the MinMax calibrator holds at once
HISTOGRAM_CHUNK_SAMPLES = 4  # histogram calibrators hold every float tensor of a sample: ~0.4 GB for BERT-base


def batch_size(calibration: CalibrationSet, wanted: int | None) -> int | None:
    """The model's static batch, else `wanted`, else 8 (1 where another axis is dynamic: samples differ)."""
    if any(s.static_batch is not None for s in calibration.specs):
        return None
    if wanted:
        return int(wanted)
    if any(isinstance(d, str) for s in calibration.specs for d in s.shape[1:]):
        return 1
    return 8


def batches(calibration: CalibrationSet, size: int | None, limit: int | None = None
            ) -> Iterator[dict[str, np.ndarray]]:
    seen = 0
    for batch in calibration.batches(size):
        if limit is not None and seen >= limit:
            return
        yield batch
        seen += len(next(iter(batch.values())))


def analysis_batches(calibration: CalibrationSet, settings: QdqSettings) -> Iterator[dict[str, np.ndarray]]:
    """The first `analysis_samples` samples, batched as calibration is: what smoothing and the checks run on."""
    return batches(calibration, batch_size(calibration, settings.batch_size), settings.analysis_samples)


def bounds(data: Any) -> tuple[float, float]:
    """(lowest, highest) of one of ORT's TensorData ranges."""
    lo, hi = (float(np.asarray(v).ravel()[0]) for v in data.range_value)
    return lo, hi


class Reader:
    """An ORT CalibrationDataReader over `calibration.batches()`, counting every sample it hands over.

    It pauses (returns None) every `chunk` batches, and wherever the batch shape changes, so that the
    calibrator folds what it holds into its ranges or histograms before reading on: memory stays bounded
    however many samples there are, and ORT's histogram collector only ever stacks equal shapes.
    `on_samples(seen)` is called after each batch it hands over (for progress).
    """

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], input_names: Sequence[str], chunk: int,
                 on_samples: Callable[[int], None] | None = None) -> None:
        self._batches = batches
        self._on_samples = on_samples
        self._names = list(input_names)
        self._chunk = chunk
        self._pending: dict[str, np.ndarray] | None = None
        self._given = 0
        self._shape: tuple | None = None
        self.samples = 0
        self.batches = 0

    def has_more(self) -> bool:
        if self._pending is None:
            self._pending = next(self._batches, None)
        return self._pending is not None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not self.has_more():
            return None
        assert self._pending is not None
        shape = tuple(np.shape(self._pending[n]) for n in self._names)
        if self._given >= self._chunk or (self._given and shape != self._shape):
            self._given = 0
            return None
        batch, self._pending, self._shape = self._pending, None, shape
        self._given += 1
        self.batches += 1
        self.samples += len(next(iter(batch.values())))
        if self._on_samples is not None:
            self._on_samples(self.samples)
        return {n: batch[n] for n in self._names}


def _as_ort_reader(reader: Reader):
    from onnxruntime.quantization import CalibrationDataReader

    class OrtReader(CalibrationDataReader):
        def get_next(self):
            return reader.get_next()

    return OrtReader()


def _collect(calibrator: Any, reader: Reader) -> None:
    ort_reader = _as_ort_reader(reader)
    while reader.has_more():
        calibrator.collect_data(ort_reader)


@dataclass(frozen=True)
class Calibrated:
    """What one calibration pass measured, for the cache record."""

    samples: int
    batches: int
    batch_size: int | None  # None: the model's static batch
    seconds: float


def calibrate(prepared: Path, calibration: CalibrationSet, settings: QdqSettings, ranges_path: Path, tmp: Path,
              on_samples: Callable[[int, int], None] = progress.count) -> Calibrated:
    """Run ORT's calibrator for `settings.method` over every sample and save its ranges at `ranges_path`;
    `on_samples(seen, total)` follows the pass (by default, the installed progress reporter)."""
    import onnx
    from onnxruntime.quantization.calibrate import TensorData, create_calibrator, save_tensors_data

    size = batch_size(calibration, settings.batch_size)
    chunk = max(1, (CHUNK_SAMPLES if settings.method == "minmax" else HISTOGRAM_CHUNK_SAMPLES) // (size or 1))
    input_names = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]
    reader = Reader(batches(calibration, size), input_names, chunk, lambda seen: on_samples(seen, len(calibration)))
    extra: dict[str, Any] = {"symmetric": False}
    if settings.method == "percentile":
        extra["percentile"] = settings.percentile
    start = time.perf_counter()
    try:
        # histograms cannot bin a float-min mask: find such tensors on a few samples, give them min/max ranges
        extreme = {} if settings.method == "minmax" else _extreme_ranges(prepared, calibration, settings,
                                                                         input_names, tmp)
        calibrator = create_calibrator(prepared, None, augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=calibration_method(settings.method), extra_options=extra)
        if extreme:
            calibrator.tensors_to_calibrate = set(calibrator.tensors_to_calibrate) - set(extreme)
        _collect(calibrator, reader)
        ranges = calibrator.compute_data()
        for name, (lo, hi) in extreme.items():
            ranges.data[name] = TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
    except BadInput:
        raise
    except Exception as exc:
        raise StepFailed(f"ONNX Runtime's {settings.method} calibration failed after {reader.samples} samples: "
                         f"{type(exc).__name__}: {exc}") from exc
    if reader.samples == 0:
        raise BadInput("No calibration sample reached the calibrator.",
                       hint="The calibration set has fewer samples than the model's static batch size.")
    save_tensors_data(ranges, ranges_path)
    return Calibrated(reader.samples, reader.batches, size, round(time.perf_counter() - start, 3))


def _extreme_ranges(prepared: Path, calibration: CalibrationSet, settings: QdqSettings, input_names: Sequence[str],
                    tmp: Path) -> dict[str, tuple[float, float]]:
    """MinMax ranges, on the analysis samples, of the tensors whose values are non-finite or sentinel-sized."""
    from onnxruntime.quantization.calibrate import create_calibrator

    reader = Reader(analysis_batches(calibration, settings), input_names, CHUNK_SAMPLES)
    calibrator = create_calibrator(prepared, None, augmented_model_path=str(tmp / "minmax-probe.onnx"))
    _collect(calibrator, reader)
    found = {}
    for name, data in calibrator.compute_data().data.items():
        lo, hi = bounds(data)
        if not (math.isfinite(lo) and math.isfinite(hi)) or max(abs(lo), abs(hi)) >= EXTREME_ABS:
            found[name] = (lo, hi)
    return found
