"""The CalibrationSet: one representative data set, sampled once, handed unchanged to every backend.

It reads samples lazily from a Source (one at a time, so memory stays flat however large the source),
conforms each to the model's input specs, and knows nothing of any backend: each backend wraps
`batches()` in its own API's reader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import Protocol

import numpy as np

from modelport.errors import BadInput
from modelport.model import TensorSpec

LABEL_KEYS = ("label", "labels")


class Source(Protocol):
    """Random access to samples: `read(i)` gives one sample, each input with a leading batch axis of 1."""

    description: str
    synthetic: bool

    def __len__(self) -> int: ...

    def read(self, index: int) -> dict[str, np.ndarray]: ...


class ArraySource:
    """Samples held in memory: arrays keyed by input name, samples on the first axis."""

    synthetic = False

    def __init__(self, arrays: Mapping[str, np.ndarray], labels: np.ndarray | None = None,
                 description: str = "arrays") -> None:
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise BadInput(f"The calibration arrays have different sample counts: {lengths}.")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.labels = None if labels is None else np.asarray(labels)
        self.description = description

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def read(self, index: int) -> dict[str, np.ndarray]:
        sample = {k: v[index:index + 1] for k, v in self.arrays.items()}
        if self.labels is not None:
            sample["label"] = self.labels[index]
        return sample


def conform(sample: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], where: str) -> dict[str, np.ndarray]:
    """Check one sample against the input specs and cast where the cast is lossless."""
    names = {s.name for s in specs}
    given = {k for k in sample if k not in LABEL_KEYS}
    if given != names:
        missing, extra = sorted(names - given), sorted(given - names)
        raise BadInput(f"{where}: inputs do not match the model's. Missing: {missing or 'none'}; "
                       f"extra: {extra or 'none'}.", hint=f"The model's inputs are {sorted(names)}.")
    out = {}
    for spec in specs:
        a = np.asarray(sample[spec.name])
        if a.ndim == len(spec.shape) - 1:
            a = a[None]
        if a.ndim != len(spec.shape):
            raise BadInput(f"{where}: input {spec.name!r} has rank {a.ndim} (shape {a.shape}); the model expects "
                           f"rank {len(spec.shape)} ({spec}).")
        for axis, (got, want) in enumerate(zip(a.shape, spec.shape, strict=True)):
            if isinstance(want, int) and axis > 0 and got != want:
                raise BadInput(f"{where}: input {spec.name!r} has shape {a.shape}; axis {axis} must be {want} "
                               f"({spec}).")
        want_dtype = np.dtype(spec.dtype)
        if a.dtype != want_dtype:
            if not np.can_cast(a.dtype, want_dtype, casting="same_kind"):
                raise BadInput(f"{where}: input {spec.name!r} is {a.dtype}; the model expects {spec.dtype}, "
                               "and the cast would lose information.")
            cast = a.astype(want_dtype)
            if not np.array_equal(cast.astype(a.dtype), a, equal_nan=True):
                raise BadInput(f"{where}: input {spec.name!r} is {a.dtype} with values that {spec.dtype} "
                               "cannot hold exactly.")
            a = cast
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise BadInput(f"{where}: input {spec.name!r} contains NaN or Inf values.")
        out[spec.name] = a
    return out


def _label_of(sample: Mapping[str, np.ndarray]) -> np.ndarray | None:
    for key in LABEL_KEYS:
        if key in sample:
            return np.asarray(sample[key])
    return None


class CalibrationSet:
    """A deterministic sample of a Source, checked against the model's inputs."""

    def __init__(self, source: Source, specs: Sequence[TensorSpec], *, size: int | None = None, seed: int = 0,
                 indices: Sequence[int] | None = None) -> None:
        self.source = source
        self.specs = list(specs)
        self.seed = seed
        if indices is None:
            n = len(source)
            if n == 0:
                raise BadInput(f"The calibration source {source.description} is empty.")
            if size is not None and size < n:
                indices = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
            else:
                indices = range(n)
        self.indices = [int(i) for i in indices]

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], *,
                    labels: np.ndarray | None = None, size: int | None = None, seed: int = 0) -> CalibrationSet:
        return cls(ArraySource(arrays, labels), specs, size=size, seed=seed)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def synthetic(self) -> bool:
        return self.source.synthetic

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def _read(self, index: int) -> dict[str, np.ndarray]:
        return self.source.read(index)

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """Each selected sample, conformed to the specs, with a leading batch axis of 1 (no labels)."""
        for i in self.indices:
            yield conform(self._read(i), self.specs, f"{self.source.description} sample {i}")

    def labels(self) -> np.ndarray | None:
        """The labels of the selected samples in order, or None where the source has none."""
        found = [_label_of(self._read(i)) for i in self.indices]
        if any(lbl is None for lbl in found):
            return None
        return np.stack(found)

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Samples concatenated on the batch axis; the default is the model's static batch size, else 1.

        A final partial batch is yielded only where the batch axis is dynamic.
        """
        static = {s.shape[0] for s in self.specs if s.shape and isinstance(s.shape[0], int)}
        if batch_size is None:
            batch_size = static.pop() if len(static) == 1 else 1
        elif static and batch_size not in static:
            raise BadInput(f"Batch size {batch_size} does not fit the model's static batch {sorted(static)}.")
        buffer: list[dict[str, np.ndarray]] = []
        for sample in self.samples():
            buffer.append(sample)
            if sum(len(next(iter(s.values()))) for s in buffer) >= batch_size:
                yield {n: np.concatenate([s[n] for s in buffer])[:batch_size] for n in self.input_names}
                buffer = []
        if buffer and not static:
            yield {n: np.concatenate([s[n] for s in buffer]) for n in self.input_names}

    def split(self, eval_size: int | float = 0.25, seed: int | None = None) -> tuple[CalibrationSet, CalibrationSet]:
        """Disjoint (calibration, evaluation) parts; the same seed gives the same split."""
        n = len(self.indices)
        k = int(round(n * eval_size)) if isinstance(eval_size, float) else int(eval_size)
        if not 0 < k < n:
            raise BadInput(f"Cannot split {n} samples into calibration and evaluation parts of {n - k} and {k}.")
        order = np.random.default_rng(self.seed if seed is None else seed).permutation(n)
        evaluation = sorted(self.indices[i] for i in order[:k])
        calibration = sorted(self.indices[i] for i in order[k:])
        return (CalibrationSet(self.source, self.specs, indices=calibration, seed=self.seed),
                CalibrationSet(self.source, self.specs, indices=evaluation, seed=self.seed))

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the content used: the same samples in any order give the same fingerprint."""
        digests = []
        for sample in self.samples():
            h = hashlib.sha256()
            for name in sorted(sample):
                a = np.ascontiguousarray(sample[name])
                h.update(f"{name}:{a.dtype}:{a.shape}".encode())
                h.update(a.tobytes())
            digests.append(h.hexdigest())
        return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        """What the manifest records of the calibration data."""
        return {"source": self.source.description, "samples": len(self), "fingerprint": self.fingerprint,
                "synthetic": self.synthetic, "seed": self.seed}
