"""The data every row is measured on, and the PyTorch FP32 outputs every row is compared with.

Data rules: `--calib` and `--eval` name separate sources; `--calib` alone is split into disjoint
calibration and evaluation parts (a quarter, or `--eval-size` samples, for evaluation; at most 300, or
`--calib-size`, of the rest for calibration); `--eval` alone
leaves calibrated precisions without data (their rows are skipped with the reason); neither gives 32
synthetic evaluation samples (latency and fidelity to PyTorch are still meaningful; accuracy is not).

The evaluation inputs are written once to DIR/cache as an .npz every measuring process reads, and the
reference outputs are computed once and cached beside them, keyed by the model's content hash and the
evaluation set's fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.calibration import CalibrationSet, SyntheticSource, open_calibration, open_source
from modelport.errors import BadInput

if TYPE_CHECKING:
    from modelport.model import SourceModel

DEFAULT_EVAL_SHARE = 0.25
SYNTHETIC_EVAL = 32
REFERENCE_VERSION = 2  # 2: eager runs with the attention fast path off (model.attention_fast_path)
SPLIT_CALIB_SIZE = 300  # the calibration part of a split, as many as `modelport build` draws by default


@dataclass
class Data:
    calibration: CalibrationSet | None
    evaluation: CalibrationSet
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    inputs_path: Path

    @property
    def samples(self) -> int:
        return len(self.evaluation)

    def describe(self) -> dict[str, Any]:
        calib = self.calibration.describe() if self.calibration is not None else None
        return {"calibration": calib, "evaluation": {**self.evaluation.describe(), "labels": self.labels is not None}}


def _subsample(part: CalibrationSet, size: int | None, seed: int) -> CalibrationSet:
    if size is None or size >= len(part):
        return part
    picked = np.sort(np.random.default_rng(seed).choice(part.indices, size, replace=False))
    return CalibrationSet(part.source, part.specs, indices=picked, seed=seed)


def open_data(source: SourceModel, calib: str | None, evaluation: str | None, *, calib_size: int | None,
              eval_size: int | None, seed: int) -> tuple[CalibrationSet | None, CalibrationSet]:
    """The calibration and evaluation sets by the rules above; evaluation takes every sample unless sized."""
    specs = source.inputs
    if evaluation is not None:
        eval_set = CalibrationSet(open_source(evaluation, specs), specs, size=eval_size, seed=seed)
        calib_set = open_calibration(calib, specs, size=calib_size, seed=seed) if calib is not None else None
        return calib_set, eval_set
    if calib is not None:
        whole = CalibrationSet(open_source(calib, specs), specs, seed=seed)
        if len(whole) < 2:
            raise BadInput(f"--calib {calib} has {len(whole)} sample; splitting it into calibration and evaluation "
                           "parts needs at least 2.", hint="Pass more samples, or a separate --eval SRC.")
        share = eval_size if eval_size is not None else max(1, round(len(whole) * DEFAULT_EVAL_SHARE))
        if not 0 < share < len(whole):
            raise BadInput(f"--eval-size {share} leaves no calibration samples out of the {len(whole)} in {calib}.",
                           hint="Choose a smaller --eval-size, or pass a separate --eval SRC.")
        calib_set, eval_set = whole.split(share, seed=seed)
        return _subsample(calib_set, calib_size or SPLIT_CALIB_SIZE, seed), eval_set
    return None, CalibrationSet(SyntheticSource(specs, eval_size or SYNTHETIC_EVAL), specs, seed=seed)


def stack(evaluation: CalibrationSet) -> dict[str, np.ndarray]:
    """The evaluation inputs as one array per input, samples on axis 0."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in evaluation.input_names}
    for sample in evaluation.samples():
        for name in parts:
            parts[name].append(sample[name])
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def prepare(source: SourceModel, calib: str | None, evaluation: str | None, *, calib_size: int | None,
            eval_size: int | None, seed: int, cache: Path) -> Data:
    calib_set, eval_set = open_data(source, calib, evaluation, calib_size=calib_size, eval_size=eval_size, seed=seed)
    labels = eval_set.labels()
    path = cache / f"eval-{eval_set.fingerprint}.npz"
    if path.is_file():
        with np.load(path) as saved:
            inputs = {name: saved[name] for name in eval_set.input_names}
    else:
        inputs = stack(eval_set)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **inputs)
        tmp.replace(path)
    return Data(calib_set, eval_set, inputs, labels, path)


def batch_of(inputs: Mapping[str, np.ndarray], start: int, size: int) -> dict[str, np.ndarray]:
    """Samples [start, start+size), the last one repeated to fill: every call sees a batch of `size`."""
    out = {}
    for name, array in inputs.items():
        part = array[start:start + size]
        if len(part) < size:
            part = np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])
        out[name] = np.ascontiguousarray(part)
    return out


def reference_outputs(source: SourceModel, data: Data, *, chunk: int, threads: int,
                      cache: Path) -> dict[str, np.ndarray]:
    """PyTorch FP32 outputs on the evaluation inputs, fed in batches of `chunk` as every runner is."""
    import torch

    path = cache / f"reference-v{REFERENCE_VERSION}-{source.content_hash}-{data.evaluation.fingerprint}-b{chunk}.npz"
    if path.is_file():
        with np.load(path) as saved:
            names = [str(n) for n in saved["__names__"]]
            return {name: saved[f"out{i}"] for i, name in enumerate(names)}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        collected: dict[str, list[np.ndarray]] = {}
        for start in range(0, data.samples, chunk):
            keep = min(chunk, data.samples - start)
            for name, value in source.run(batch_of(data.inputs, start, chunk)).items():
                collected.setdefault(name, []).append(value[:keep])
    finally:
        torch.set_num_threads(previous)
    outputs = {name: np.concatenate(parts) for name, parts in collected.items()}
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, __names__=np.array(list(outputs)), **{f"out{i}": v for i, v in enumerate(outputs.values())})
    tmp.replace(path)
    return outputs
