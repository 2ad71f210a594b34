"""The CalibrationSet: one representative data set, sampled once, handed unchanged to every backend.

It reads samples lazily from a Source, one at a time, so memory stays flat however large the source;
conforms each to the model's input specs (checks.py); and knows nothing of any backend: each backend
wraps `batches()` in its own API's reader.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from modelport.calibration.checks import LABEL_KEYS, conform
from modelport.calibration.fingerprint import combine, sample_digest
from modelport.errors import BadInput
from modelport.specs import TensorSpec

DEFAULT_SIZE = 300  # samples drawn from a larger source when no size is given (open_calibration)


class Source(Protocol):
    """Random access to samples: `read(i)` gives one sample, each input with a leading batch axis of 1.

    A sample may carry its label under `label`. Sources may also offer `label(i)` (the label without
    reading the inputs), `locate(i)` (where sample i lives, for messages), `details()` (what describe()
    records) and `kind`; SourceBase gives defaults for all of them.
    """

    description: str
    synthetic: bool

    def __len__(self) -> int: ...

    def read(self, index: int) -> dict[str, np.ndarray]: ...


class SourceBase(ABC):
    """Defaults for the optional parts of a Source; subclasses give its length and samples."""

    kind = "source"
    synthetic = False
    description = "source"

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, index: int) -> dict[str, np.ndarray]: ...

    def label(self, index: int) -> np.ndarray | None:
        return _label_in(self.read(index))

    def locate(self, index: int) -> str:
        return f"{self.description} sample {index}"

    def details(self) -> dict[str, Any]:
        return {}


def _label_in(sample: Mapping[str, Any]) -> np.ndarray | None:
    for key in LABEL_KEYS:
        if key in sample and sample[key] is not None:
            return np.asarray(sample[key])
    return None


class ArraySource(SourceBase):
    """Samples held in memory: arrays keyed by input name, samples on the first axis."""

    kind = "arrays"

    def __init__(self, arrays: Mapping[str, np.ndarray], labels: np.ndarray | None = None,
                 description: str = "arrays") -> None:
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.description = description
        lengths = {k: len(v) if v.ndim else 1 for k, v in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            raise BadInput(f"{description}: the arrays have different sample counts on their first axis: {lengths}.",
                           hint="Every input (and labels) needs one entry per sample on axis 0.")
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and lengths and len(self.labels) != next(iter(lengths.values())):
            raise BadInput(f"{description}: {len(self.labels)} labels for {next(iter(lengths.values()))} samples.")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def read(self, index: int) -> dict[str, np.ndarray]:
        sample = {k: v[index:index + 1] for k, v in self.arrays.items()}
        if self.labels is not None:
            sample["label"] = self.labels[index]
        return sample

    def label(self, index: int) -> np.ndarray | None:
        return None if self.labels is None else np.asarray(self.labels[index])


class CalibrationSet:
    """A deterministic sample of a Source, checked against the model's inputs.

    `size` draws that many samples without replacement (seeded, kept in source order); None takes all.
    `open_calibration` applies the command line's default of DEFAULT_SIZE.
    """

    def __init__(self, source: Source, specs: Sequence[TensorSpec], *, size: int | None = None, seed: int = 0,
                 indices: Sequence[int] | None = None) -> None:
        self.source = source
        self.specs = list(specs)
        self.seed = seed
        self.size = size
        n = len(source)
        if indices is None:
            if size is not None and size < 1:
                raise BadInput(f"--calib-size must be at least 1, not {size}.")
            if n == 0:
                raise BadInput(f"The calibration source {source.description} has no samples.",
                               hint="Check the path and that the files hold data for the model's inputs.")
            if size is not None and size < n:
                indices = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
            else:
                indices = range(n)
        self.indices = [int(i) for i in indices]
        if not self.indices:
            raise BadInput(f"No samples selected from {source.description}.")
        if min(self.indices) < 0 or max(self.indices) >= n:
            raise BadInput(f"Sample indices out of range for {source.description} ({n} samples).")

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], *,
                    labels: np.ndarray | None = None, size: int | None = None, seed: int = 0) -> CalibrationSet:
        """A set over in-memory arrays keyed by input name (samples on axis 0), with optional labels."""
        return cls(ArraySource(arrays, labels), specs, size=size, seed=seed)

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"CalibrationSet({self.source.description!r}, {len(self)} of {len(self.source)} samples)"

    @property
    def synthetic(self) -> bool:
        return bool(getattr(self.source, "synthetic", False))

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def where(self, index: int) -> str:
        """Where source sample `index` lives, for messages: a file, a file and row, or an index."""
        locate = getattr(self.source, "locate", None)
        return locate(index) if locate else f"{self.source.description} sample {index}"

    def label_of(self, index: int, raw: Mapping[str, Any] | None = None) -> np.ndarray | None:
        """The label of source sample `index` (from `raw`, its already-read sample, where given)."""
        if raw is not None:
            return _label_in(raw)
        label = getattr(self.source, "label", None)
        return label(index) if label else _label_in(self.source.read(index))

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """Each selected sample, conformed to the specs, with a leading batch axis of 1 (no labels)."""
        for i in self.indices:
            yield conform(self.source.read(i), self.specs, self.where(i))

    def labels(self) -> np.ndarray | None:
        """The labels of the selected samples in order, or None where the source has none."""
        found = [self.label_of(i) for i in self.indices]
        if any(lbl is None for lbl in found):
            return None
        return np.stack(found)

    def batch_size(self, batch_size: int | None = None) -> int:
        """The batch size `batches()` uses: the model's static batch, else `batch_size`, else 1."""
        static = {s.static_batch for s in self.specs if s.static_batch is not None}
        if len(static) > 1:
            raise BadInput(f"The model's inputs have different static batch sizes {sorted(static)}.")
        if batch_size is not None and batch_size < 1:
            raise BadInput(f"The batch size must be at least 1, not {batch_size}.")
        if static:
            fixed = static.pop()
            if batch_size is not None and batch_size != fixed:
                raise BadInput(f"Batch size {batch_size} does not fit the model's static batch of {fixed}.",
                               hint="Export with a dynamic batch axis (--dynamic NAME:0=batch) to choose it.")
            if fixed > len(self):
                raise BadInput(f"The model's static batch is {fixed}, but the calibration set has only "
                               f"{len(self)} samples.", hint="Give more samples (--calib-size).")
            return fixed
        return batch_size or 1

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Samples concatenated on the batch axis, in the model's static batch size or `batch_size` (default 1).

        Where the batch is static, a final partial batch is dropped (the model cannot take it); where it
        is dynamic, the last batch may be smaller, and a batch also ends early where the next sample's
        shape differs (a dynamic sequence length).
        """
        size = self.batch_size(batch_size)
        static = any(s.static_batch is not None for s in self.specs)
        names = self.input_names
        buffer: list[dict[str, np.ndarray]] = []
        for sample in self.samples():
            if buffer and any(sample[n].shape != buffer[0][n].shape for n in names):
                if static:
                    raise BadInput(f"Calibration samples differ in shape ({ {n: buffer[0][n].shape for n in names} } "
                                   f"vs { {n: sample[n].shape for n in names} }), so they cannot fill the model's "
                                   f"static batch of {size}.")
                yield {n: np.concatenate([s[n] for s in buffer]) for n in names}
                buffer = []
            buffer.append(sample)
            if len(buffer) == size:
                yield {n: np.concatenate([s[n] for s in buffer]) for n in names}
                buffer = []
        if buffer and not static:
            yield {n: np.concatenate([s[n] for s in buffer]) for n in names}

    def split(self, eval_size: int | float = 0.25, seed: int | None = None) -> tuple[CalibrationSet, CalibrationSet]:
        """Disjoint (calibration, evaluation) parts; `eval_size` is a fraction or a count; same seed, same split."""
        n = len(self.indices)
        k = round(n * eval_size) if isinstance(eval_size, float) else int(eval_size)
        if not 0 < k < n:
            raise BadInput(f"Cannot split {n} samples into calibration and evaluation parts of {n - k} and {k}.",
                           hint="Each part needs at least one sample.")
        order = np.random.default_rng(self.seed if seed is None else seed).permutation(n)
        evaluation = sorted(self.indices[i] for i in order[:k])
        calibration = sorted(self.indices[i] for i in order[k:])
        return (CalibrationSet(self.source, self.specs, indices=calibration, seed=self.seed),
                CalibrationSet(self.source, self.specs, indices=evaluation, seed=self.seed))

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the samples used, in any order; computing it reads and checks every sample."""
        return combine(sample_digest(s) for s in self.samples())

    def describe(self) -> dict[str, Any]:
        """What the manifest records of the calibration data."""
        details = getattr(self.source, "details", None)
        return {"source": self.source.description, "kind": getattr(self.source, "kind", "source"),
                "samples": len(self), "found": len(self.source), "fingerprint": self.fingerprint,
                "synthetic": self.synthetic, "seed": self.seed, **(details() if details else {})}
